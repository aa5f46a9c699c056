package caddynix

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/serve"
	"github.com/dustin/go-humanize"
)

// serveLanding answers the cache's root: what it holds, its keys and the
// nix.conf lines that use it.
func (h *Handler) serveLanding(w http.ResponseWriter, r *http.Request) error {
	size, _ := h.cache.Stats(r.Context())
	return h.cache.Landing(w, r, serve.LandingPage{
		Name:       h.cacheName(r),
		URL:        h.cacheURL(r),
		PublicKeys: h.publicKeyStrings(),
		StoreDir:   h.StoreDir,
		Priority:   *h.Priority,
		Retention:  h.retentionSummary(size),
		Sources:    h.sources.Names(),
		ClientKeys: h.clientKeys(),
		LastPush:   h.activity.LastPush(),
	})
}

// retentionSummary says what the retention block keeps the cache to, with
// the share of max_size that size takes.
func (h *Handler) retentionSummary(size int64) string {
	r := h.Retention
	if r == nil {
		return ""
	}
	var parts []string
	if r.MaxSize > 0 {
		parts = append(parts, fmt.Sprintf("%s of max_size %s (%.0f%%)", humanize.IBytes(uint64(size)), humanize.IBytes(uint64(r.MaxSize)), 100*float64(size)/float64(r.MaxSize)))
	}
	if r.MaxAge > 0 {
		parts = append(parts, "paths unused for "+time.Duration(r.MaxAge).String()+" are deleted")
	}
	if len(parts) == 0 {
		return "collected every " + time.Duration(r.Interval).String()
	}
	return strings.Join(parts, "; ")
}

// cacheName is the configured name, or the host the request was sent to.
func (h *Handler) cacheName(r *http.Request) string {
	if h.Name != "" {
		return h.Name
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		return r.Host
	}
	return host
}

// cacheURL is the URL clients use as a substituter: the configured url, or
// the scheme and host of the request and the path the handler is mounted at.
func (h *Handler) cacheURL(r *http.Request) string {
	if h.url != "" {
		return h.url
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	prefix := ""
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		prefix = strings.TrimSuffix(strings.TrimSuffix(orig.URL.Path, r.URL.Path), "/")
	}
	return scheme + "://" + r.Host + prefix
}
