// Package caddynix is a Caddy HTTP handler that serves a Nix binary cache.
//
// The handler (module http.handlers.nix_cache, Caddyfile directive nix_cache)
// serves a directory in the layout that `nix copy --to file://DIR` writes:
// nix-cache-info, <hash>.narinfo, nar/<filehash>.nar[.xz|.zst|.bz2], <hash>.ls,
// log/<drv> and realisations/<id>.doi. narinfo is signed on the fly with every
// configured key. Only the cache's URL shapes are answered; anything else is
// a 404, and nothing outside the cache root is reachable.
package caddynix

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler serves a Nix binary cache from a directory.
type Handler struct {
	// Name identifies the cache on its landing page, and names the key that
	// generate_key creates. Default: the host name the request was addressed
	// to. Caddyfile: `name`.
	Name string `json:"name,omitempty"`

	// URL is the address clients reach the cache at, e.g.
	// https://cache.example.org. A gitea_runner hands it to jobs as their
	// substituter and upload target; the landing page shows it. Default: the
	// URL of the request. Caddyfile: `url`.
	URL string `json:"url,omitempty"`

	// Root is the cache directory, in the layout that `nix copy --to
	// file://DIR` writes. It is created when missing. Placeholders such as
	// {env.CACHE_ROOT} are expanded. Required unless Storage names a
	// bucket, or the cache only passes on a live store or upstreams.
	// Caddyfile: `root`.
	Root string `json:"root,omitempty"`

	// Storage keeps the cache in an S3-compatible bucket instead of a
	// directory; then Root is left out. Caddyfile: `storage s3 { … }`.
	Storage *StorageConfig `json:"storage,omitempty"`

	// SecretKeyFiles are the cache's signing keys, in the format of
	// `nix-store --generate-binary-cache-key` (`name:base64`). Every key
	// signs every narinfo; signatures a narinfo already carries are kept. A
	// key file readable by group or others is refused. Without keys, narinfo
	// is served as stored. Caddyfile: `secret_key_file` (repeatable).
	SecretKeyFiles []string `json:"secret_key_files,omitempty"`

	// GenerateKey creates the first secret key file, and a public key file
	// beside it with the extension .pub, when it does not exist yet. The key
	// is named after Name ("<name>-1", default "nix-cache-1"). Meant for
	// development; in production create keys with `caddy nix-cache keygen`.
	// Default: false. Caddyfile: `generate_key`.
	GenerateKey bool `json:"generate_key,omitempty"`

	// StoreDir is the Nix store directory the cache's paths belong to, as
	// announced in nix-cache-info. Clients refuse a cache whose store
	// directory differs from theirs. Default: /nix/store. Caddyfile:
	// `store_dir`.
	StoreDir string `json:"store_dir,omitempty"`

	// Priority is announced in nix-cache-info; clients prefer caches with a
	// lower value (cache.nixos.org uses 40). Default: 40. Caddyfile:
	// `priority`.
	Priority *int `json:"priority,omitempty"`

	// WantMassQuery tells clients, through nix-cache-info, that they may
	// query many paths at once. Default: true. Caddyfile: `want_mass_query`.
	WantMassQuery *bool `json:"want_mass_query,omitempty"`

	// Upload enables authenticated uploads from `nix copy --to http(s)://…`.
	// Without it, PUT answers 405. Caddyfile: an `upload` block.
	Upload *UploadConfig `json:"upload,omitempty"`

	// Retention deletes what the cache no longer needs, whole closures at
	// a time, least recently used first. Without it, the cache only
	// grows. Caddyfile: a `retention` block.
	Retention *RetentionConfig `json:"retention,omitempty"`

	// LiveStore serves the paths of a local Nix store, e.g. the machine's
	// /nix/store, beside what the cache holds: what the cache holds is
	// answered first, then the store's valid paths, made into NARs when
	// they are asked for. Caddyfile: `store <dir> [{ … }]`.
	LiveStore *LiveStoreConfig `json:"store,omitempty"`

	// Upstreams are other binary caches, asked in order for what the cache
	// and the live store do not hold. Caddyfile: `upstream <url> { … }`
	// (repeatable).
	Upstreams []*UpstreamConfig `json:"upstreams,omitempty"`

	// IndexFile is where the cache keeps its index: every path's
	// references, sizes, provenance and last use, the pins and the CI runs
	// that pushed. The files stay the truth: a lost index is rebuilt from
	// them. Default: a file under Caddy's data directory named after the
	// root (`caddy nix-cache` commands find it the same way). Caddyfile:
	// `index_file`.
	IndexFile string `json:"index_file,omitempty"`

	root     string
	state    *retention.State
	store    storage.Store
	keys     []signature.SecretKey
	narinfos *narinfoCache
	stats    *statsCache
	creds    *credentials
	receiver *upload.Receiver
	url      string
	// redirect is how long the signed URLs NAR requests are redirected to
	// live; 0 serves NARs through the node.
	redirect time.Duration
	// gcGrace is how long collections on shared storage announce what
	// they delete before deleting it.
	gcGrace time.Duration
	shared  *sharedCache
	// sources are the live store and the upstreams.
	sources *sources.Sources
	// warnedOutside holds the names of symlinks out of the root that
	// requests have been refused, each warned about once.
	warnedOutside *sync.Map
	logger        *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.nix_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, opens the cache root and loads the signing keys.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.narinfos = newNarinfoCache(h.logger)
	h.stats = new(statsCache)
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
	h.narinfos.watch(h.store)
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
	h.warnedOutside = new(sync.Map)
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
	h.receiver = h.newReceiver()
	if h.sources, err = h.openSources(ctx, repl); err != nil {
		return fmt.Errorf("nix_cache: %w", err)
	}
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
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("nix_cache: registering metrics: %w", err)
	}
	return nil
}

// newReceiver is what takes the cache's uploads, and the paths it keeps of
// its upstreams.
func (h *Handler) newReceiver() *upload.Receiver {
	opts := upload.Options{
		Store: h.store, StoreDir: h.StoreDir, Keys: h.keys, State: h.state, Grace: h.gcGrace,
		Logger: h.logger, Metrics: uploadMetrics{},
	}
	if h.Upload != nil {
		opts.MaxNarSize, opts.MaxLogSize = h.Upload.MaxNarSize, h.Upload.MaxLogSize
	}
	return upload.New(opts)
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

// collector collects the handler's cache with the index idx.
func (h *Handler) collector(idx *index.Index) *retention.Collector {
	return retention.NewCollector(retention.Options{
		Store: h.store, StoreDir: h.StoreDir, State: h.state, Index: idx,
		Logger: h.logger, Metrics: retentionMetrics{}, Cache: h.cacheLabel(), Grace: h.gcGrace,
	})
}

// cacheLabel names the cache in metrics and logs: its name, or its root.
func (h *Handler) cacheLabel() string {
	if h.Name != "" {
		return h.Name
	}
	return h.root
}

// publicKeyStrings lists the public keys of the signing keys, in Nix's
// format, for trusted-public-keys.
func (h *Handler) publicKeyStrings() []string {
	out := make([]string, len(h.keys))
	for i, key := range h.keys {
		out[i] = key.ToPublicKey().String()
	}
	return out
}

// clientKeys are the keys a client trusts to use the cache: its own, and
// those of upstreams whose paths it passes on without signing them.
func (h *Handler) clientKeys() []string {
	return append(h.publicKeyStrings(), h.sources.PassedOnKeys()...)
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

// Cleanup releases the cache root and leaves the shared states.
func (h *Handler) Cleanup() error {
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
	if h.narinfos != nil {
		if err := h.narinfos.close(); err != nil {
			return err
		}
	}
	if h.store != nil {
		return h.store.Close()
	}
	return nil
}

// uploadPrefix is the cache again, below its own URL, for uploads. Nix
// remembers every narinfo it uploads, unsigned, in its lookup cache under
// the URL it uploaded to, and then trusts that copy over the server's
// signed one for a month: a machine that uploaded to the substituter's URL
// could not substitute what it uploaded. Uploading to URL/upload keeps
// those copies apart from the substituter's.
const uploadPrefix = "/upload/"

// ServeHTTP answers the cache's own URL shapes and 404s everything else.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	urlPath := r.URL.Path
	if rest, found := strings.CutPrefix(urlPath, uploadPrefix); found && h.Upload != nil {
		urlPath = "/" + rest
	}
	req, ok := cacheurl.Classify(urlPath)
	kind := "other"
	if ok {
		kind = req.Kind.String()
	}
	mw := &meteredWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	err := h.serve(mw, r, req, ok)
	mw.record(kind, err)
	if errors.As(err, new(httpx.Aborted)) {
		// The header is out: only a cut connection tells the client.
		panic(http.ErrAbortHandler)
	}
	return err
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, req cacheurl.Request, ok bool) error {
	if r.Method == http.MethodPut && h.Upload != nil {
		return h.serveUpload(w, r, req, ok)
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", h.allowedMethods())
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s is not allowed on a binary cache", r.Method))
	}
	if !ok {
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	switch req.Kind {
	case cacheurl.Landing:
		return h.serveLanding(w, r)
	case cacheurl.CacheInfo:
		return h.serveCacheInfo(w, r)
	case cacheurl.NarInfo:
		return h.serveNarInfo(w, r, req)
	default:
		return h.serveFile(w, r, req)
	}
}

// allowedMethods is the Allow header's value.
func (h *Handler) allowedMethods() string {
	if h.Upload != nil {
		return "GET, HEAD, PUT"
	}
	return "GET, HEAD"
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
