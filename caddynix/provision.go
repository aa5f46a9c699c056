package caddynix

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/activity"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/serve"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"go.uber.org/zap"
)

// Provision sets defaults, opens the cache root and loads the signing keys.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger, h.requests = ctx.Logger(), new(inFlight)
	repl := caddy.NewReplacer()
	h.root = repl.ReplaceAll(h.Root, "")
	if h.StoreDir == "" {
		h.StoreDir = "/nix/store"
	}
	if h.Priority == nil {
		priority := 40
		h.Priority = &priority
	}
	if h.WantMassQuery == nil {
		want := true
		h.WantMassQuery = &want
	}
	var err error
	if h.store, h.root, err = openStore(ctx, repl, h.root, h.Storage, h.LiveStore != nil || len(h.Upstreams) > 0); err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
	if err := h.checkStorageNeeds(); err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
	if h.Storage != nil && h.Storage.S3 != nil {
		h.redirect = time.Duration(h.Storage.S3.Redirect)
	}
	h.gcGrace = h.Storage.gcGrace()
	if data, err := storage.ReadAll(ctx, h.store, "nix-cache-info", nixfmt.MaxSmallDocumentSize); err == nil {
		if stored := nixfmt.CacheInfoStoreDir(data); stored != "" && stored != h.StoreDir {
			return fmt.Errorf("nix_cache: %s/nix-cache-info says StoreDir %s but store_dir is %s: the cache holds paths of another store; set store_dir to match", h.root, stored, h.StoreDir)
		}
	}
	if err := h.loadKeys(repl); err != nil {
		return err
	}
	if len(h.keys) > 0 {
		key, err := overlay.SigningKey(h.keys[0])
		if err != nil {
			return fmt.Errorf("nix_cache: deriving the overlay key: %w", err)
		}
		h.overlayKey = &key
	}
	if h.Upload != nil {
		if h.Upload.MaxNarSize == 0 {
			h.Upload.MaxNarSize = upload.DefaultMaxNarSize
		}
		if h.Upload.MaxLogSize == 0 {
			h.Upload.MaxLogSize = upload.DefaultMaxLogSize
		}
		h.creds, err = loadCredentials(h.Upload, repl)
		if err != nil {
			return fmt.Errorf("nix_cache: %w", err)
		}
		if h.tiers, err = newTierRule(h.Upload.TrustedRefs); err != nil {
			return fmt.Errorf("nix_cache: %w", err)
		}
	}
	if h.Retention != nil {
		h.Retention.setDefaults()
	}
	indexPath := repl.ReplaceAll(h.IndexFile, "")
	if indexPath == "" {
		indexPath = defaultIndexPath(h.root)
	}
	if h.state, err = joinCacheState(indexPath); err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
	h.activity, h.pins = activity.For(h.cacheLabel()), new(pinsSeen)
	h.receiver = h.newReceiver()
	if h.sources, err = h.openSources(ctx, repl); err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
	h.cache = h.newCache()
	app, err := ctx.App("nix_cache")
	if err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
	app.(*App).register(h)
	h.url = strings.TrimRight(repl.ReplaceAll(h.URL, ""), "/")
	if err := h.shareCache(); err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
	h.sweepLeftovers(ctx)
	if err := metrics.Register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("nix_cache: registering metrics: %w", err)
	}
	metrics.Retention{}.Known(h.cacheLabel())
	return nil
}

// newReceiver is what takes the cache's uploads, and the paths it keeps of
// its upstreams.
func (h *Handler) newReceiver() *upload.Receiver {
	opts := upload.Options{
		Store: h.store, StoreDir: h.StoreDir, Keys: h.keys, State: h.state, Grace: h.gcGrace,
		Logger: h.logger, Metrics: metrics.Upload{},
	}
	if h.Upload != nil {
		opts.MaxNarSize, opts.MaxLogSize = h.Upload.MaxNarSize, h.Upload.MaxLogSize
	}
	return upload.New(opts)
}

// newCache is what serves the cache's storage and, after it, its sources.
func (h *Handler) newCache() *serve.Cache {
	opts := serve.Options{
		Store: h.store, StoreDir: h.StoreDir, Keys: h.keys, State: h.state, Sources: h.sources,
		Redirect: h.redirect, Logger: h.logger, Metrics: serveObserver{activity: h.activity},
	}
	if _, shared := h.store.(storage.Leaser); shared {
		opts.Changes = retention.Watch(h.store, h.gcGrace, h.logger)
	}
	return serve.New(opts)
}

// checkStorageNeeds refuses what needs storage of the cache's own when it
// has none.
func (h *Handler) checkStorageNeeds() error {
	if h.store != storage.Empty {
		return nil
	}
	if h.Upload != nil {
		return errors.New("upload needs the cache to keep paths: set root, or storage s3")
	}
	if h.Retention != nil {
		return errors.New("retention needs the cache to keep paths: set root, or storage s3")
	}
	for _, u := range h.Upstreams {
		if u.Keep {
			return fmt.Errorf("keep (upstream %s) needs the cache to keep paths: set root, or storage s3", u.URL)
		}
	}
	return nil
}

// loadKeys reads every secret key file, first generating the first one if
// GenerateKey asks for it.
func (h *Handler) loadKeys(repl *caddy.Replacer) error {
	if h.GenerateKey {
		if len(h.SecretKeyFiles) == 0 {
			return errors.New("nix_cache: generate_key needs a secret_key_file to write the key to")
		}
		path := repl.ReplaceAll(h.SecretKeyFiles[0], "")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			name := h.Name
			if name == "" {
				name = "nix-cache"
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return fmt.Errorf("nix_cache: generate_key: %w", err)
			}
			public, err := nixfmt.GenerateKeyPair(name+"-1", path, strings.TrimSuffix(path, ".sec")+".pub")
			if err != nil {
				return fmt.Errorf("nix_cache: generate_key: %w", err)
			}
			h.logger.Info("generated a cache signing key", zap.String("secret_key_file", path), zap.String("public_key", public.String()))
		}
	}
	names := map[string]string{}
	for _, file := range h.SecretKeyFiles {
		path := repl.ReplaceAll(file, "")
		key, err := nixfmt.LoadSecretKey(path)
		if err != nil {
			return fmt.Errorf("nix_cache: %w", err)
		}
		name := key.ToPublicKey().Name
		if other, dup := names[name]; dup {
			return fmt.Errorf("nix_cache: secret keys %s and %s have the same name %q: clients tell keys apart by name, so give each key its own", other, path, name)
		}
		names[name] = path
		h.keys = append(h.keys, key)
	}
	if len(h.keys) > 0 {
		h.logger.Info("signing narinfo", zap.String("root", h.root), zap.Strings("public_keys", h.publicKeyStrings()))
	}
	return nil
}

// Validate checks the provisioned configuration.
func (h *Handler) Validate() error {
	if !strings.HasPrefix(h.StoreDir, "/") || strings.HasSuffix(h.StoreDir, "/") {
		return fmt.Errorf("nix_cache: store_dir %q must be an absolute path without a trailing slash, e.g. /nix/store", h.StoreDir)
	}
	if *h.Priority < 0 {
		return fmt.Errorf("nix_cache: priority %d must not be negative", *h.Priority)
	}
	if h.Upload != nil && (h.Upload.MaxNarSize < 0 || h.Upload.MaxLogSize < 0) {
		return fmt.Errorf("nix_cache: max_nar_size %d and max_log_size %d must be positive", h.Upload.MaxNarSize, h.Upload.MaxLogSize)
	}
	if h.Retention != nil {
		if err := h.Retention.validate(); err != nil {
			return fmt.Errorf("nix_cache: %w", err)
		}
	}
	return nil
}

// Cleanup releases the cache root and leaves the shared states, at once
// or, while the old configuration of a reload still serves requests, as
// the last of them ends.
func (h *Handler) Cleanup() error {
	if h.requests != nil && h.requests.releaseWhenIdle(func() {
		if err := h.release(); err != nil {
			h.logger.Error("releasing the cache of an old configuration after its last request", zap.Error(err))
		}
	}) {
		return nil
	}
	return h.release()
}

// release lets go of what the handler holds: its sources, its share of
// the cache's state, its storage.
func (h *Handler) release() error {
	if h.sources != nil {
		// The configuration's context is done: background keeps end soon.
		if err := h.sources.Close(); err != nil {
			return err
		}
		h.sources = nil
	}
	if h.state != nil {
		if err := leaveCacheState(h.state); err != nil {
			return err
		}
		h.state = nil
	}
	if h.shared != nil {
		if _, err := namedCaches.Delete(h.Name); err != nil {
			return err
		}
		h.shared = nil
	}
	if h.cache != nil {
		if err := h.cache.Close(); err != nil {
			return err
		}
		h.cache = nil
	}
	if h.store != nil {
		return h.store.Close()
	}
	return nil
}

// shareCache joins the named cache's shared state and records this
// configuration's URL and keys in it.
func (h *Handler) shareCache() error {
	if h.Name == "" {
		return nil
	}
	value, _, err := namedCaches.LoadOrNew(h.Name, func() (caddy.Destructor, error) {
		return &sharedCache{}, nil
	})
	if err != nil {
		return err
	}
	h.shared = value.(*sharedCache)
	h.shared.mu.Lock()
	defer h.shared.mu.Unlock()
	h.shared.url = h.url
	h.shared.state = h.state
	h.shared.logger = h.logger
	h.shared.publicKeys = h.clientKeys()
	h.shared.tiers = h.tiers
	h.shared.overlayPublicKey = ""
	if h.overlayKey != nil {
		h.shared.overlayPublicKey = h.overlayKey.ToPublicKey().String()
	}
	if h.Upload != nil && h.shared.jobTokens == nil {
		h.shared.jobTokens = map[[sha256.Size]byte]issuedCredential{}
	}
	return nil
}

// openSources opens the live store and upstreams the configuration names.
func (h *Handler) openSources(ctx context.Context, repl *caddy.Replacer) (*sources.Sources, error) {
	opts := sources.Options{Store: h.store, StoreDir: h.StoreDir, Keys: h.keys, Logger: h.logger, Keeper: h.receiver}
	if cfg := h.LiveStore; cfg != nil {
		opts.Live = &sources.LiveOptions{
			Dir: repl.ReplaceAll(cfg.Dir, ""), Database: repl.ReplaceAll(cfg.Database, ""),
			LogDir: repl.ReplaceAll(cfg.LogDir, ""), Compression: cfg.Compression,
		}
	}
	for _, cfg := range h.Upstreams {
		up := sources.UpstreamOptions{URL: repl.ReplaceAll(cfg.URL, ""), Keep: cfg.Keep, Sign: cfg.Sign, Timeout: time.Duration(cfg.Timeout)}
		for _, key := range cfg.TrustedPublicKeys {
			up.TrustedPublicKeys = append(up.TrustedPublicKeys, repl.ReplaceAll(key, ""))
		}
		opts.Upstreams = append(opts.Upstreams, up)
	}
	return sources.New(ctx, opts)
}
