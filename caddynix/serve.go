package caddynix

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/serve"
)

// uploadPrefix is the cache again, below its own URL, for uploads. Nix
// remembers every narinfo it uploads, unsigned, in its lookup cache under
// the URL it uploaded to, and then trusts that copy over the server's
// signed one for a month: a machine that uploaded to the substituter's URL
// could not substitute what it uploaded. Uploading to URL/upload keeps
// those copies apart from the substituter's.
const uploadPrefix = "/upload/"

// ServeHTTP answers the cache's own URL shapes and 404s everything else.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	h.requests.start()
	defer h.requests.end()
	urlPath := r.URL.Path
	if rest, found := strings.CutPrefix(urlPath, uploadPrefix); found && h.Upload != nil {
		urlPath = "/" + rest
	}
	req, ok := cacheurl.Classify(urlPath)
	kind := metrics.OtherKind
	if ok {
		kind = req.Kind.String()
	}
	mw := metrics.NewWriter(w)
	err := httpError(h.serve(mw, r, req, ok))
	mw.Record(kind, err)
	h.activity.Request()
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
		return h.cache.NarInfo(w, r, req, func() *serve.Cache { return h.requestOverlay(r) })
	default:
		return h.cache.File(w, r, req, func() *serve.Cache { return h.requestOverlay(r) })
	}
}

// httpError is err as Caddy answers it: an *httpx.StatusError of the
// packages below becomes a caddyhttp.HandlerError with its status.
func httpError(err error) error {
	var status *httpx.StatusError
	if errors.As(err, &status) {
		return caddyhttp.Error(status.Status, status.Err)
	}
	return err
}

// allowedMethods is the Allow header's value.
func (h *Handler) allowedMethods() string {
	if h.Upload != nil {
		return "GET, HEAD, PUT"
	}
	return "GET, HEAD"
}
