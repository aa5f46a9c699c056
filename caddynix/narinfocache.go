package caddynix

import (
	"sync"
)

// maxCachedNarinfos bounds the signed-narinfo cache. A signed narinfo is
// under a kilobyte for typical closures, so the cache stays well below
// 100 MiB.
const maxCachedNarinfos = 65536

// narinfoCache keeps signed narinfos in memory, so that a narinfo is parsed
// and signed once, not on every request. An entry is used only while the
// object it came from is unchanged: the same storage.Info.Version.
type narinfoCache struct {
	mu      sync.Mutex
	entries map[string]cachedNarinfo
}

type cachedNarinfo struct {
	version string
	body    []byte
}

func newNarinfoCache() *narinfoCache {
	return &narinfoCache{entries: make(map[string]cachedNarinfo)}
}

// get returns the cached body for the object name at version, or builds
// it with build.
func (c *narinfoCache) get(name, version string, build func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	entry, ok := c.entries[name]
	c.mu.Unlock()
	if ok && entry.version == version {
		return entry.body, nil
	}
	body, err := build()
	if err != nil {
		return nil, err
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
	c.entries[name] = cachedNarinfo{version: version, body: body}
	return body, nil
}
