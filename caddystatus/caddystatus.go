// Package caddystatus is the status page of the CI host:
// http.handlers.host_status (Caddyfile directive host_status) shows in one
// page the runners this Caddy runs and their jobs, the Nix caches it
// serves with their size, traffic, pushes, pins and collections, and its
// actions caches. The page is drawn on the server, reads without
// JavaScript, and updates itself while open through server-sent events.
//
// The page is for operators: put it behind Caddy's basic_auth or
// forward_auth. It shows no secret: no key, token or credential is in
// what it gathers.
package caddystatus

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// defaultRefresh is how often an open page updates unless configured.
const defaultRefresh = 5 * time.Second

// Handler serves the status page.
type Handler struct {
	// Refresh is how often an open page updates itself. Default: 5s.
	// Caddyfile: `refresh`.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Title heads the page. Default: "CI host". Caddyfile: `title`.
	Title string `json:"title,omitempty"`

	// ctx ends with the configuration: open event streams end with it,
	// so that a reload never waits on an open page, whose browser then
	// connects to the new configuration.
	ctx    caddy.Context
	logger *zap.Logger
	// shutdowns holds, per server the page is served by, a channel
	// closed when that server shuts down.
	shutdowns *sync.Map
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.host_status",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets the defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.ctx, h.logger, h.shutdowns = ctx, ctx.Logger(), new(sync.Map)
	if h.Refresh == 0 {
		h.Refresh = caddy.Duration(defaultRefresh)
	}
	if h.Title == "" {
		h.Title = "CI host"
	}
	return nil
}

// Validate refuses a refresh that is not positive.
func (h *Handler) Validate() error {
	if h.Refresh <= 0 {
		return fmt.Errorf("host_status: refresh must be a positive duration such as 5s, not %s", time.Duration(h.Refresh))
	}
	return nil
}

// ServeHTTP answers the page, its data feed and its assets, chosen by the
// query: ?feed=events is the stream of page updates, ?format=json the
// data the page shows, ?asset=NAME the stylesheet and the script.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s is not allowed on the status page", r.Method))
	}
	setSecurityHeaders(w)
	query := r.URL.Query()
	switch {
	case query.Has("asset"):
		return serveAsset(w, r, query.Get("asset"))
	case query.Has("feed"):
		if query.Get("feed") != "events" {
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("unknown status feed %q: use ?feed=events", query.Get("feed")))
		}
		return h.serveEvents(w, r)
	case query.Has("format"):
		if query.Get("format") != "json" {
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("unknown status format %q: use ?format=json", query.Get("format")))
		}
		return h.serveJSON(w, r)
	default:
		return h.servePage(w, r)
	}
}

// setSecurityHeaders keeps the page from running anything but its own
// script and from being framed, and out of caches.
func setSecurityHeaders(w http.ResponseWriter) {
	header := w.Header()
	header.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
	header.Set("X-Content-Type-Options", "nosniff")
	header.Set("Referrer-Policy", "same-origin")
	header.Set("Cache-Control", "no-store")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
