// Package caddynix is a Caddy HTTP handler that serves a Nix binary cache.
//
// The handler (module http.handlers.nix_cache, Caddyfile directive nix_cache)
// serves a directory in the layout that `nix copy --to file://DIR` writes:
// nix-cache-info, <hash>.narinfo, nar/<filehash>.nar[.xz|.zst|.bz2], <hash>.ls,
// log/<drv> and realisations/<id>.doi. Only those URL shapes are answered;
// anything else is a 404, and nothing outside the cache root is reachable.
package caddynix

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler serves a Nix binary cache from a directory.
type Handler struct {
	// Name identifies the cache, for example on its landing page. Default: the
	// host name the request was addressed to. Caddyfile: `name`.
	Name string `json:"name,omitempty"`

	// Root is the cache directory, in the layout that `nix copy --to
	// file://DIR` writes. It is created when missing. Placeholders such as
	// {env.CACHE_ROOT} are expanded. Required. Caddyfile: `root`.
	Root string `json:"root,omitempty"`

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

	root   string
	dir    *os.Root
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.nix_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and opens the cache root.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
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
	if h.root == "" {
		return errors.New("nix_cache: root is required: set it to the cache directory, e.g. `root cache/store`")
	}
	abs, err := filepath.Abs(h.root)
	if err != nil {
		return fmt.Errorf("nix_cache: resolving root %q: %w", h.root, err)
	}
	h.root = abs
	if err := os.MkdirAll(h.root, 0o755); err != nil {
		return fmt.Errorf("nix_cache: creating cache root %s: %w", h.root, err)
	}
	h.dir, err = os.OpenRoot(h.root)
	if err != nil {
		return fmt.Errorf("nix_cache: opening cache root %s: %w", h.root, err)
	}
	return nil
}

// Cleanup releases the cache root.
func (h *Handler) Cleanup() error {
	if h.dir != nil {
		return h.dir.Close()
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
	return nil
}

// ServeHTTP answers the cache's own URL shapes and 404s everything else.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s is not allowed on a binary cache", r.Method))
	}
	req, ok := classify(r.URL.Path)
	if !ok {
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	switch req.kind {
	case kindCacheInfo:
		return h.serveCacheInfo(w, r)
	default:
		return h.serveFile(w, r, req)
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
