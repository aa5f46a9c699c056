// Package actionscache serves the cache of GitHub-style Actions jobs, the
// `_apis/artifactcache` protocol that `@actions/cache` (and so
// `actions/cache`) speaks to every server but github.com, as a Caddy HTTP
// handler: http.handlers.actions_cache.
//
// Each request carries a job's ACTIONS_RUNTIME_TOKEN, which the
// gitea_runner app admits for exactly the job's lifetime, with the job's
// scope: it restores entries of its own repository, from its own ref first
// and then from the default branch, and writes entries stamped with its
// ref, so that a pull request never writes what the default branch
// restores. Archives are downloaded through short-lived signed URLs.
// Entries are kept per repository up to max_size, least recently used
// first, and for max_age after their last use.
package actionscache

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// apiPath marks the cache's requests; what comes before it is the base URL
// that jobs were given as ACTIONS_CACHE_URL.
const apiPath = "/_apis/artifactcache/"

// Defaults, GitHub's: 10 GB per repository, 7 days after the last use.
const (
	defaultMaxSize = 10 << 30
	defaultMaxAge  = 7 * 24 * time.Hour
)

// Handler serves an actions cache below any path that ends in
// _apis/artifactcache/; every other request goes to the next handler, so
// it can share a site with a nix_cache.
type Handler struct {
	// Name identifies the cache to the gitea_runner app, which admits each
	// job's token (`actions_cache <name>` in its global option). Required.
	// Caddyfile: `name`.
	Name string `json:"name,omitempty"`

	// URL is the address jobs reach the cache at, given to them as
	// ACTIONS_CACHE_URL, e.g. https://cache.example.org/. Job containers
	// must reach it: the cache site's public host name, or a loopback
	// address when jobs use the host's network. Required. Caddyfile: `url`.
	URL string `json:"url,omitempty"`

	// Root is the directory the entries are stored in. Default:
	// actions_cache/<name> under Caddy's data directory. Caddyfile: `root`.
	Root string `json:"root,omitempty"`

	// MaxSize is how many bytes of entries each repository keeps; beyond
	// it the least recently used go. Default: 10GiB. Caddyfile: `max_size`.
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxAge is how long an entry is kept after a job last restored it (or
	// saved it). Default: 7d. Caddyfile: `max_age`.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	url      string
	root     string
	label    string
	keep     retention
	entries  *entryStore
	registry *registry
	signer   *signer
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.actions_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision opens the cache's directory and joins the state that the
// handlers of other configurations with the same name and root share.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	h.Name = repl.ReplaceAll(h.Name, "")
	if h.Name == "" {
		return errors.New("actions_cache: a name is required, for the gitea_runner app's `actions_cache <name>`")
	}
	h.url = repl.ReplaceAll(h.URL, "")
	if h.url == "" {
		return fmt.Errorf("actions_cache %s: url is required: the address jobs reach the cache at, e.g. https://cache.example.org/", h.Name)
	}
	if !strings.HasPrefix(h.url, "http://") && !strings.HasPrefix(h.url, "https://") {
		return fmt.Errorf("actions_cache %s: url %q is not an http(s) URL", h.Name, h.url)
	}
	// @actions/cache appends _apis/… to it as is.
	h.url = strings.TrimRight(h.url, "/") + "/"
	h.keep = retention{maxSize: h.MaxSize, maxAge: time.Duration(h.MaxAge)}
	if h.keep.maxSize == 0 {
		h.keep.maxSize = defaultMaxSize
	}
	if h.keep.maxAge == 0 {
		h.keep.maxAge = defaultMaxAge
	}
	root := repl.ReplaceAll(h.Root, "")
	if root == "" {
		root = filepath.Join(caddy.AppDataDir(), "actions_cache", h.Name)
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("actions_cache %s: root: %w", h.Name, err)
	}
	h.root, h.label = root, h.Name
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("actions_cache %s: registering metrics: %w", h.Name, err)
	}
	knownMetrics(h.label)

	value, _, err := stores.LoadOrNew(root, func() (caddy.Destructor, error) {
		if err := os.MkdirAll(root, 0o700); err != nil {
			return nil, fmt.Errorf("creating the cache directory: %w", err)
		}
		store, err := dir.Open(root)
		if err != nil {
			return nil, err
		}
		s := &entryStore{store: store, logger: h.logger, label: h.label,
			entries: map[int64]*entry{}, pending: map[int64]*reservation{}}
		if err := s.load(ctx); err != nil {
			_ = store.Close()
			return nil, err
		}
		return s, nil
	})
	if err != nil {
		return fmt.Errorf("actions_cache %s: %w", h.Name, err)
	}
	h.entries = value.(*entryStore)
	h.entries.maxSize.Store(h.keep.maxSize)
	h.entries.pruneSoon(ctx, h.keep, time.Now())

	value, _, err = registries.LoadOrNew(h.Name, func() (caddy.Destructor, error) {
		return &registry{tokens: map[[32]byte]*grant{}}, nil
	})
	if err != nil {
		return err
	}
	h.registry = value.(*registry)
	h.registry.mu.Lock()
	h.registry.url = h.url
	h.registry.released = h.entries.dropGrant
	if h.registry.signer == nil {
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		h.registry.signer = &signer{key: key}
	}
	h.signer = h.registry.signer
	h.registry.mu.Unlock()
	return nil
}

// Validate checks the limits.
func (h *Handler) Validate() error {
	if h.MaxSize < 0 || h.MaxAge < 0 {
		return fmt.Errorf("actions_cache %s: max_size and max_age must not be negative", h.Name)
	}
	return nil
}

// Cleanup leaves the shared state; the last configuration to leave closes
// it.
func (h *Handler) Cleanup() error {
	var errs []error
	if h.registry != nil {
		_, err := registries.Delete(h.Name)
		errs = append(errs, err)
	}
	if h.entries != nil {
		_, err := stores.Delete(h.root)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ServeHTTP answers the cache's API and passes every other request on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	base, resource, ok := strings.Cut(r.URL.Path, apiPath)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	err := h.serveAPI(w, r, base, resource)
	var cerr *requestError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &cerr):
		rejectedRequests.WithLabelValues(h.label, fmt.Sprint(cerr.status)).Inc()
		h.logger.Debug("actions cache request refused", zap.String("path", r.URL.Path), zap.Int("status", cerr.status), zap.String("reason", cerr.message))
		if cerr.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="actions cache"`)
		}
		return writeJSON(w, cerr.status, map[string]string{"message": cerr.message})
	case r.Context().Err() != nil:
		return nil
	case storageFull(err):
		rejectedRequests.WithLabelValues(h.label, fmt.Sprint(http.StatusInsufficientStorage)).Inc()
		h.logger.Error("the actions cache's storage is full", zap.String("path", r.URL.Path), zap.Error(err))
		return writeJSON(w, http.StatusInsufficientStorage, map[string]string{"message": "the cache's storage is full: the entry was not saved"})
	default:
		h.logger.Error("actions cache request failed", zap.String("path", r.URL.Path), zap.Error(err))
		return writeJSON(w, http.StatusInternalServerError, map[string]string{"message": "the cache failed to answer; see the server's log"})
	}
}

// serveAPI routes one request of the protocol.
func (h *Handler) serveAPI(w http.ResponseWriter, r *http.Request, base, resource string) error {
	if idText, ok := strings.CutPrefix(resource, "artifacts/"); ok {
		// Archive downloads carry a signature instead of the token.
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return clientError(http.StatusMethodNotAllowed, "archives are only downloaded")
		}
		return h.download(w, r, idText)
	}
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if token == "" {
		return clientError(http.StatusUnauthorized, "no job token: send the job's ACTIONS_RUNTIME_TOKEN as a Bearer token")
	}
	g, ok := h.registry.lookup(token)
	if !ok {
		return clientError(http.StatusUnauthorized, "the token is not that of a running job")
	}
	switch idText, isCache := strings.CutPrefix(resource, "caches/"); {
	case resource == "cache" && r.Method == http.MethodGet:
		return h.lookup(w, r, g, base)
	case resource == "caches" && r.Method == http.MethodGet:
		return h.list(w, r, g)
	case resource == "caches" && r.Method == http.MethodPost:
		return h.reserve(w, r, g)
	case isCache && r.Method == http.MethodPatch:
		if err := h.uploadChunk(r, g, idText); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case isCache && r.Method == http.MethodPost:
		return h.commit(w, r, g, idText)
	}
	return clientError(http.StatusNotFound, "%s %s is not part of the cache's API", r.Method, resource)
}

// storageFull reports whether err is the disk (or a quota) being full.
func storageFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// requestError is a refusal of a client's request, answered with its
// status and one line of reason.
type requestError struct {
	status  int
	message string
}

func (e *requestError) Error() string { return e.message }

func clientError(status int, format string, args ...any) error {
	return &requestError{status: status, message: fmt.Sprintf(format, args...)}
}

// maxJSONBody bounds the JSON requests, which are a key and a version.
const maxJSONBody = 64 << 10

func decodeJSON(r *http.Request, into any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxJSONBody))
	if err := dec.Decode(into); err != nil {
		return clientError(http.StatusBadRequest, "the request body is not the JSON expected: %v", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, value any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(value)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
