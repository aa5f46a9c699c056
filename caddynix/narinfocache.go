package caddynix

import (
	"io/fs"
	"sync"
	"syscall"
	"time"
)

// maxCachedNarinfos bounds the signed-narinfo cache. A signed narinfo is
// under a kilobyte for typical closures, so the cache stays well below
// 100 MiB.
const maxCachedNarinfos = 65536

// narinfoCache keeps signed narinfos in memory, so that a narinfo is parsed
// and signed once, not on every request. An entry is used only while the
// file it came from is unchanged: same inode, size and modification time.
type narinfoCache struct {
	mu      sync.Mutex
	entries map[string]cachedNarinfo
}

type cachedNarinfo struct {
	inode   uint64
	size    int64
	modTime time.Time
	body    []byte
}

func newNarinfoCache() *narinfoCache {
	return &narinfoCache{entries: make(map[string]cachedNarinfo)}
}

// get returns the cached body for the file name, or builds it with make.
func (c *narinfoCache) get(name string, info fs.FileInfo, build func() ([]byte, error)) ([]byte, error) {
	key := cachedNarinfo{inode: inodeOf(info), size: info.Size(), modTime: info.ModTime()}
	c.mu.Lock()
	entry, ok := c.entries[name]
	c.mu.Unlock()
	if ok && entry.inode == key.inode && entry.size == key.size && entry.modTime.Equal(key.modTime) {
		return entry.body, nil
	}
	body, err := build()
	if err != nil {
		return nil, err
	}
	key.body = body
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxCachedNarinfos {
		// Evict an arbitrary entry: map iteration order is random.
		for old := range c.entries {
			delete(c.entries, old)
			break
		}
	}
	c.entries[name] = key
	return body, nil
}

func inodeOf(info fs.FileInfo) uint64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
