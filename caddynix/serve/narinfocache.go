package serve

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
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
// where the storage's changes are watched, no change to it reported since
// the look at the storage that built the entry and, on shared storage
// (storage.Forewarned), none announced, for TrustFor at most.
type narinfoCache struct {
	mu      sync.Mutex
	entries map[string]*signedNarinfo
	// changes is the storage's record of changes, while it is usable.
	changes atomic.Pointer[storageChanges]
	// drained counts the changes taken from the record, so that an entry
	// built while one was taken is not trusted.
	drained atomic.Uint64
	// epoch counts the storage's failures: an entry is trusted only in the
	// epoch it was trusted in. Under mu.
	epoch  uint64
	logger *zap.Logger
}

// storageChanges wraps storage.Changes for an atomic pointer.
type storageChanges struct {
	storage.Changes
	// forewarned is Changes, on shared storage.
	forewarned storage.Forewarned
}

// distrusts reports whether what is derived from the object name, looked
// at when checked, needs another look.
func (c *storageChanges) distrusts(name string, checked time.Time) bool {
	return c.forewarned != nil && (c.forewarned.Announced(name) || time.Since(checked) >= c.forewarned.TrustFor())
}

// signedNarinfo is a narinfo as served.
type signedNarinfo struct {
	version string
	// checked is when the storage was looked at for it.
	checked time.Time
	modTime time.Time
	// lastModified is modTime as the Last-Modified header says it.
	lastModified string
	body         []byte
	// trusted entries are served without a look at the storage: no change
	// to the object was recorded since before the look that built them,
	// and the storage has not failed since epoch.
	trusted bool
	epoch   uint64
}

func newNarinfoCache(logger *zap.Logger) *narinfoCache {
	return &narinfoCache{entries: make(map[string]*signedNarinfo), logger: logger}
}

// watch lets the cache serve entries without a look at the storage while
// changes are reported; without, every request looks.
func (c *narinfoCache) watch(changes storage.Changes) {
	forewarned, _ := changes.(storage.Forewarned)
	c.changes.Store(&storageChanges{Changes: changes, forewarned: forewarned})
}

// close stops watching the storage.
func (c *narinfoCache) close() error {
	if changes := c.changes.Swap(nil); changes != nil {
		return changes.Close()
	}
	return nil
}

// current returns the entry for name when it can be served without a look
// at the storage: every change made so far has been taken in, and none
// was to its object.
func (c *narinfoCache) current(name string) (*signedNarinfo, bool) {
	changes := c.changes.Load()
	if changes == nil {
		return nil, false
	}
	if err := changes.Drain(c.changed); err != nil {
		if c.changes.CompareAndSwap(changes, nil) {
			c.logger.Warn("stopped watching the cache for changes: every narinfo request looks at its file again", zap.Error(err))
			_ = changes.Close()
		}
		return nil, false
	}
	c.mu.Lock()
	entry, ok := c.entries[name]
	epoch := c.epoch
	c.mu.Unlock()
	if !ok || !entry.trusted || entry.epoch != epoch || changes.distrusts(name, entry.checked) {
		return nil, false
	}
	return entry, true
}

// mark is taken before a look at the storage and given to get, which then
// trusts what it builds only if no change was taken in between.
func (c *narinfoCache) mark() uint64 { return c.drained.Load() }

// get returns the entry for the object name described by info, built with
// build unless it is cached at that version.
func (c *narinfoCache) get(name string, info storage.Info, mark uint64, build func() ([]byte, error)) (*signedNarinfo, error) {
	checked := time.Now()
	c.mu.Lock()
	entry, ok := c.entries[name]
	if ok && entry.version == info.Version {
		if c.trustworthy(mark, name, checked) {
			entry = &signedNarinfo{version: entry.version, checked: checked, modTime: entry.modTime, lastModified: entry.lastModified, body: entry.body, trusted: true, epoch: c.epoch}
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
		checked:      checked,
		modTime:      info.ModTime,
		lastModified: httpx.LastModified(info.ModTime),
		body:         body,
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Under the lock that changed takes: a change taken after this point
	// removes the entry.
	entry.trusted, entry.epoch = c.trustworthy(mark, name, checked), c.epoch
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

// trustworthy reports whether what a look at the object name, taken at
// mark and checked, saw can be served without another look, for as long
// as no change to it is taken in.
func (c *narinfoCache) trustworthy(mark uint64, name string, checked time.Time) bool {
	changes := c.changes.Load()
	return changes != nil && c.drained.Load() == mark && !changes.distrusts(name, checked)
}

// changed forgets the entry of the object name, or with "" every entry.
func (c *narinfoCache) changed(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drained.Add(1)
	if name == "" {
		clear(c.entries)
		return
	}
	delete(c.entries, name)
}

// distrust serves no entry without a look at the storage until a look
// succeeds again: the storage just failed, and a narinfo whose NAR cannot
// be read is better answered with the storage's failure.
func (c *narinfoCache) distrust() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drained.Add(1)
	c.epoch++
}
