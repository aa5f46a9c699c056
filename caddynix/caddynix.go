// Package caddynix is the Caddy face of a Nix binary cache: the
// http.handlers.nix_cache handler (Caddyfile directive nix_cache), its
// configuration and provisioning, the admin routes, the `caddy nix-cache`
// commands and the nix_cache app that runs background work.
//
// The cache answers the layout that `nix copy --to file://DIR` writes:
// nix-cache-info, <hash>.narinfo, nar/<filehash>.nar[.xz|.zst|.bz2],
// <hash>.ls, log/<drv> and realisations/<id>.doi, narinfo signed with every
// configured key. Only those URL shapes are answered; anything else is a
// 404, and nothing outside the cache root is reachable.
//
// The work is done below: serve answers what the storage holds, sources
// what it does not, upload checks and commits pushes, retention decides
// what is kept, overlay keeps what untrusted refs push apart, storage
// holds the files and the index. This package wires them together, decides
// each credential's trust tier (tiers.go), and turns errors into Caddy's.
package caddynix

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/activity"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/serve"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
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

	root  string
	state *retention.State
	store storage.Store
	keys  []signature.SecretKey
	// tiers decide where each credential's pushes go.
	tiers tierRule
	// overlayKey signs what overlays serve; nil for an unsigned cache.
	overlayKey *signature.SecretKey
	// cache serves what the storage holds, then the sources.
	cache    *serve.Cache
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
	// activity is what the status page shows of the cache over time.
	activity *activity.Recorder
	// requests are the requests being served, which keep what they use
	// from being released by a reload.
	requests *inFlight
	// pins are those the status last read.
	pins   *pinsSeen
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.nix_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// collectionCPUShare is the share of one CPU that the walks and deletions
// of a collection in a serving caddy take at most, so that requests keep
// the rest; `caddy nix-cache gc --root` runs at full speed.
const collectionCPUShare = 0.25

// collector collects the handler's cache with the index idx.
func (h *Handler) collector(idx *index.Index) *retention.Collector {
	return retention.NewCollector(retention.Options{
		Store: h.store, StoreDir: h.StoreDir, State: h.state, Index: idx,
		Logger: h.logger, Metrics: retentionObserver{activity: h.activity}, Cache: h.cacheLabel(), Grace: h.gcGrace,
		CPUShare: collectionCPUShare,
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
