package caddynix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// operation is one thing an operator does to a cache, offered both as an
// admin route, /nix-cache/<name>, and as `caddy nix-cache <command>`, with
// the same parameters (query parameters, or flags) and the same JSON
// answer.
type operation struct {
	method string
	run    func(ctx context.Context, c *retention.Collector, params url.Values, defaults *RetentionConfig) (any, error)
}

var operations = map[string]operation{
	"gc": {http.MethodPost, func(ctx context.Context, c *retention.Collector, params url.Values, defaults *RetentionConfig) (any, error) {
		pol, err := policyOf(params, defaults)
		if err != nil {
			return nil, err
		}
		return c.Collect(ctx, pol, params.Get("dry_run") == "true")
	}},
	"reindex": {http.MethodPost, func(ctx context.Context, c *retention.Collector, params url.Values, _ *RetentionConfig) (any, error) {
		return c.Reindex(ctx, params.Get("full") == "true")
	}},
	"pins": {http.MethodGet, func(ctx context.Context, c *retention.Collector, _ url.Values, _ *RetentionConfig) (any, error) {
		return c.Pins(ctx)
	}},
	"pin": {http.MethodPost, func(ctx context.Context, c *retention.Collector, params url.Values, _ *RetentionConfig) (any, error) {
		return c.Pin(ctx, params.Get("name"), params.Get("store_path"))
	}},
	"unpin": {http.MethodPost, func(ctx context.Context, c *retention.Collector, params url.Values, _ *RetentionConfig) (any, error) {
		return map[string]string{"unpinned": params.Get("name")}, c.Unpin(ctx, params.Get("name"))
	}},
	"path-info": {http.MethodGet, func(ctx context.Context, c *retention.Collector, params url.Values, _ *RetentionConfig) (any, error) {
		return c.PathInfo(ctx, params.Get("store_path"))
	}},
	"delete": {http.MethodPost, func(ctx context.Context, c *retention.Collector, params url.Values, _ *RetentionConfig) (any, error) {
		return c.DeletePath(ctx, params.Get("store_path"), params.Get("with_referrers") == "true")
	}},
}

// policyOf is a collection's policy: max_size, max_age, min_age and
// overlay_max_age from params, else from the cache's retention block, else
// none (min_age 1h, overlay_max_age 7d).
func policyOf(params url.Values, defaults *RetentionConfig) (retention.Policy, error) {
	pol := retention.Policy{MinAge: retention.DefaultMinAge, OverlayMaxAge: retention.DefaultOverlayMaxAge}
	if defaults != nil {
		pol = defaults.policy()
	}
	if v := params.Get("max_size"); v != "" {
		size, ok := caddyutil.ByteSize(v)
		if !ok {
			return pol, fmt.Errorf("max_size %q is not a size such as 50GiB", v)
		}
		pol.MaxSize = size
	}
	for name, target := range map[string]*time.Duration{"max_age": &pol.MaxAge, "min_age": &pol.MinAge, "overlay_max_age": &pol.OverlayMaxAge} {
		if v := params.Get(name); v != "" {
			d, err := caddy.ParseDuration(v)
			if err != nil || d < 0 {
				return pol, fmt.Errorf("%s %q is not a duration such as 90d or 1h", name, v)
			}
			*target = d
		}
	}
	return pol, nil
}

// runningCaches are the caches whose nix_cache app has started, by label
// (name, or root).
var runningCaches = struct {
	sync.Mutex
	byLabel map[string]*Handler
}{byLabel: map[string]*Handler{}}

func (h *Handler) startServing() {
	runningCaches.Lock()
	defer runningCaches.Unlock()
	runningCaches.byLabel[h.cacheLabel()] = h
}

func (h *Handler) stopServing() {
	runningCaches.Lock()
	defer runningCaches.Unlock()
	if runningCaches.byLabel[h.cacheLabel()] == h {
		delete(runningCaches.byLabel, h.cacheLabel())
	}
}

// runningCache finds a running cache by name or root; with no label, the
// only one.
func runningCache(label string) (*Handler, error) {
	runningCaches.Lock()
	defer runningCaches.Unlock()
	if h, ok := runningCaches.byLabel[label]; ok {
		return h, nil
	}
	var labels []string
	for l := range runningCaches.byLabel {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	if label == "" && len(labels) == 1 {
		return runningCaches.byLabel[labels[0]], nil
	}
	if label == "" {
		return nil, fmt.Errorf("say which cache with ?cache=<name or root>: this caddy serves %s", strings.Join(labels, ", "))
	}
	return nil, fmt.Errorf("no cache %q is served here; this caddy serves %s", label, strings.Join(labels, ", "))
}

// adminAPI serves the operations on Caddy's admin endpoint, e.g.
// POST /nix-cache/gc?cache=main&max_size=40GiB&dry_run=true.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.nix_cache",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/nix-cache/", Handler: caddy.AdminHandlerFunc(serveOperation)}}
}

// indexWait bounds how long an operation waits for the cache's index to
// be opened: a caddy that just started may be compacting it, or waiting
// for another process that holds it.
const indexWait = time.Minute

func serveOperation(w http.ResponseWriter, r *http.Request) error {
	name := strings.TrimPrefix(r.URL.Path, "/nix-cache/")
	op, ok := operations[name]
	if !ok {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no operation %q: use gc, reindex, pins, pin, unpin, path-info or delete", name)}
	}
	if r.Method != op.method {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("%s needs %s", name, op.method)}
	}
	params := r.URL.Query()
	h, err := runningCache(params.Get("cache"))
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	waiting, cancel := context.WithTimeout(r.Context(), indexWait)
	idx, err := h.state.WaitIndex(waiting)
	cancel()
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("the cache's index %s did not open within %s: caddy's log says why (another process may hold it); try again later", h.state.IndexPath(), indexWait)}
	}
	result, err := op.run(r.Context(), h.collector(idx), params, h.Retention)
	if err != nil {
		return caddy.APIError{HTTPStatus: operationStatus(err), Err: err}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(result)
}

// operationStatus is the admin route's status for an operation's error.
func operationStatus(err error) int {
	switch {
	case errors.Is(err, retention.ErrUnknownPath), errors.Is(err, retention.ErrNoSuchPin):
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

// Interface guards
var _ caddy.AdminRouter = (*adminAPI)(nil)
