package caddynix

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// maxCachedNarinfos bounds the signed-narinfo cache. A signed narinfo is
// under a kilobyte for typical closures, so the cache stays well below
// 100 MiB.
const maxCachedNarinfos = 65536

// narinfoCache keeps signed narinfos in memory, so that a narinfo is parsed
// and signed once, not on every request. An entry is used only while the
// object it came from is unchanged: the same storage.Info.Version, or,
// while the storage reports every change (storage.Watcher), no change
// reported since the entry was built.
type narinfoCache struct {
	mu      sync.Mutex
	entries map[string]*signedNarinfo
	// watched is set while the storage reports every change.
	watched atomic.Bool
	// changes counts the changes reported, so that an entry built while
	// one came in is not trusted without a look at the storage.
	changes atomic.Uint64
}

// signedNarinfo is a narinfo as served.
type signedNarinfo struct {
	version string
	modTime time.Time
	// lastModified is modTime as the Last-Modified header says it.
	lastModified string
	body         []byte
	// trusted entries are served without a look at the storage while it
	// is watched: no change to the object was reported since before the
	// look that built them.
	trusted bool
}

func newNarinfoCache() *narinfoCache {
	return &narinfoCache{entries: make(map[string]*signedNarinfo)}
}

// current returns the entry for name when it can be served without a look
// at the storage.
func (c *narinfoCache) current(name string) (*signedNarinfo, bool) {
	if !c.watched.Load() {
		return nil, false
	}
	c.mu.Lock()
	entry, ok := c.entries[name]
	c.mu.Unlock()
	return entry, ok && entry.trusted
}

// mark is taken before a look at the storage and given to get, which then
// trusts what it builds only if no change was reported in between.
func (c *narinfoCache) mark() uint64 { return c.changes.Load() }

// get returns the entry for the object name described by info, built with
// build unless it is cached at that version.
func (c *narinfoCache) get(name string, info storage.Info, mark uint64, build func() ([]byte, error)) (*signedNarinfo, error) {
	trusted := c.watched.Load() && c.changes.Load() == mark
	c.mu.Lock()
	entry, ok := c.entries[name]
	if ok && entry.version == info.Version {
		if trusted && !entry.trusted {
			entry = &signedNarinfo{version: entry.version, modTime: entry.modTime, lastModified: entry.lastModified, body: entry.body, trusted: true}
			c.entries[name] = entry
		}
		c.mu.Unlock()
		return entry, nil
	}
	c.mu.Unlock()
	body, err := build()
	if err != nil {
		return nil, err
	}
	entry = &signedNarinfo{
		version:      info.Version,
		modTime:      info.ModTime,
		lastModified: info.ModTime.UTC().Format(http.TimeFormat),
		body:         body,
		// Checked again after the build: a change reported meanwhile may
		// be one the build did not see.
		trusted: c.watched.Load() && c.changes.Load() == mark,
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxCachedNarinfos {
		// Evict an arbitrary entry: map iteration order is random.
		for old := range c.entries {
			delete(c.entries, old)
			break
		}
	}
	c.entries[name] = entry
	return entry, nil
}

// changed forgets the entry of the object name, or with "" every entry.
func (c *narinfoCache) changed(name string) {
	c.changes.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if name == "" {
		clear(c.entries)
		return
	}
	delete(c.entries, name)
}

// setWatched says whether the storage reports every change from now on.
// Either way no entry is trusted any more: changes may have gone
// unreported before.
func (c *narinfoCache) setWatched(on bool) {
	c.changes.Add(1)
	c.mu.Lock()
	for name, entry := range c.entries {
		if entry.trusted {
			untrusted := *entry
			untrusted.trusted = false
			c.entries[name] = &untrusted
		}
	}
	c.mu.Unlock()
	c.watched.Store(on)
}

// watchNarinfos lets the signed narinfos be served without a look at the
// storage for as long as the storage reports every change, until ctx ends.
func (h *Handler) watchNarinfos(ctx context.Context) {
	watcher, ok := h.store.(storage.Watcher)
	if !ok {
		return
	}
	started := false
	err := watcher.Watch(ctx, func() {
		started = true
		h.narinfos.setWatched(true)
	}, h.narinfos.changed)
	h.narinfos.setWatched(false)
	switch {
	case ctx.Err() != nil:
	case started:
		h.logger.Warn("stopped watching the cache for changes: every narinfo request looks at its file again", zap.Error(err))
	default:
		h.logger.Info("every narinfo request looks at its file, because the cache cannot be watched for changes", zap.Error(err))
	}
}
