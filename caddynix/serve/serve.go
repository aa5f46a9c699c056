// Package serve answers what a nix_cache holds in its own storage: signed
// narinfos, kept in memory while their files are unchanged, NARs, listings
// and logs with ranges, sendfile(2) from a directory and splice(2) from a
// storage's connection, or a redirect to a URL the storage signs, and the
// landing page. What the storage does not hold is asked of
// the sources, in their order.
//
// It serves HTTP inside Caddy but knows nothing of its configuration:
// errors come back as *httpx.StatusError for the handler to answer.
package serve

import (
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
)

// Metrics is told the result of every narinfo lookup: served or missing.
type Metrics interface {
	NarinfoLookup(result string)
}

type noMetrics struct{}

func (noMetrics) NarinfoLookup(string) {}

// Options are what a Cache serves and how.
type Options struct {
	Store storage.Store
	// StoreDir is the store directory of the cache's paths, /nix/store.
	StoreDir string
	// Keys sign every narinfo served from the storage.
	Keys []signature.SecretKey
	// State is told which paths are served, for retention.
	State *retention.State
	// Sources answer what the storage does not hold.
	Sources *sources.Sources
	// Changes, when set, tell of changes to Store in place of Store's own
	// Watch (storage.Watcher): on shared storage, what retention.Watch
	// returns. Close closes them.
	Changes storage.Changes
	// Redirect, when not 0, answers NAR requests with a redirect to a URL
	// the storage (a storage.Presigner) signs for that long.
	Redirect time.Duration
	Logger   *zap.Logger
	Metrics  Metrics
}

// Cache serves one cache's storage.
type Cache struct {
	store    storage.Store
	storeDir string
	keys     []signature.SecretKey
	state    *retention.State
	sources  *sources.Sources
	redirect time.Duration
	logger   *zap.Logger
	metrics  Metrics
	narinfos *narinfoCache
	stats    *statsCache
	// warnedOutside holds the names of symlinks out of the root that
	// requests have been refused, each warned about once.
	warnedOutside sync.Map
}

// New returns a Cache serving what opts describe. Where the storage's
// changes are watched, signed narinfos are served from memory without a
// look at it until Close.
func New(opts Options) *Cache {
	c := &Cache{
		store: opts.Store, storeDir: opts.StoreDir, keys: opts.Keys, state: opts.State, sources: opts.Sources,
		redirect: opts.Redirect, logger: opts.Logger, metrics: opts.Metrics,
		narinfos: newNarinfoCache(opts.Logger), stats: new(statsCache),
	}
	if c.metrics == nil {
		c.metrics = noMetrics{}
	}
	switch watcher, ok := opts.Store.(storage.Watcher); {
	case opts.Changes != nil:
		c.narinfos.watch(opts.Changes)
	case ok:
		changes, err := watcher.Watch()
		if err != nil {
			c.logger.Info("every narinfo request looks at its file, because the cache's changes cannot be watched", zap.Error(err))
			break
		}
		c.narinfos.watch(changes)
	}
	return c
}

// Close stops watching the storage.
func (c *Cache) Close() error { return c.narinfos.close() }

// Overlay returns a Cache that serves store, an overlay of this cache's
// storage, signed with keys: what NarInfo and File ask when the storage
// lacks a file. It has no sources and notes no use; it keeps no signed
// narinfo in memory, so it is cheap to make for one request.
func (c *Cache) Overlay(store storage.Store, keys []signature.SecretKey) *Cache {
	return &Cache{
		store: store, storeDir: c.storeDir, keys: keys, redirect: c.redirect, logger: c.logger,
		metrics: noMetrics{}, narinfos: newNarinfoCache(c.logger), stats: new(statsCache),
	}
}
