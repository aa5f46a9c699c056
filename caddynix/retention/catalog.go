package retention

import (
	"bytes"
	"cmp"
	"slices"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

// catalog is every indexed path as a collection plans with it, in a few
// dozen bytes each, so that a million paths fit in about a hundred
// megabytes: a path is its id, its position in the order of the index's
// keys, and its fields are columns indexed by id.
type catalog struct {
	keys index.Keys // every path's index key (index.KeyOf)
	// byPrefix[p] is the first id whose key begins with the two bytes p,
	// to start lookups close to their answer.
	byPrefix []uint32

	refStart []uint32 // references of id are refs[refStart[id]:refStart[id+1]]
	refs     []uint32 // ids of the indexed paths each references

	nar         []uint32 // id of each path's NAR file
	narSize     []int64  // by NAR id
	narKeys     []uint64 // by NAR id: index.NarKey of its name
	narinfoSize []int64
	// lastPushed and served are Unix nanoseconds; 0 for never.
	lastPushed      []int64
	served          []int64
	pullRequestOnly []bool
}

// len is how many paths the catalog holds.
func (c *catalog) len() int { return c.keys.Len() }

// key is the index key of path id.
func (c *catalog) key(id uint32) []byte { return c.keys.At(int(id)) }

// hash is the hash part of path id.
func (c *catalog) hash(id uint32) string { return index.HashOf(c.key(id)) }

// find returns the id of the path whose index key is key.
func (c *catalog) find(key []byte) (uint32, bool) {
	lo, hi := 0, c.len()
	if len(key) >= 2 && c.byPrefix != nil {
		p := prefixOf(key)
		lo, hi = int(c.byPrefix[p]), int(c.byPrefix[p+1])
	}
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if bytes.Compare(c.key(uint32(mid)), key) < 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < c.len() && bytes.Equal(c.key(uint32(lo)), key) {
		return uint32(lo), true
	}
	return 0, false
}

// findHash returns the id of the path with hash part hash.
func (c *catalog) findHash(hash string) (uint32, bool) { return c.find(index.KeyOf(hash)) }

// references are the ids of the indexed paths that path id references.
func (c *catalog) references(id uint32) []uint32 { return c.refs[c.refStart[id]:c.refStart[id+1]] }

// lastUsed is when path id was last pushed or served.
func (c *catalog) lastUsed(id uint32) int64 { return max(c.lastPushed[id], c.served[id]) }

// size is the bytes of NAR files and narinfos, a NAR that several paths
// name counted once.
func (c *catalog) size() int64 {
	var size int64
	for _, s := range c.narSize {
		size += s
	}
	for _, s := range c.narinfoSize {
		size += s
	}
	return size
}

// catalogBuilder fills a catalog: every path with add, in the order of
// their keys; then their served times; then, in the same order, their
// references.
type catalogBuilder struct {
	c          *catalog
	nars       map[uint64]uint32
	references int    // how many the paths added name
	next       uint32 // the path whose references come next
}

// newCatalogBuilder returns a builder of a catalog of about n paths.
func newCatalogBuilder(n int) *catalogBuilder {
	c := &catalog{
		keys:            index.MakeKeys(n),
		nar:             make([]uint32, 0, n),
		narinfoSize:     make([]int64, 0, n),
		lastPushed:      make([]int64, 0, n),
		pullRequestOnly: make([]bool, 0, n),
	}
	return &catalogBuilder{c: c, nars: make(map[uint64]uint32, n)}
}

func (b *catalogBuilder) add(s *index.Summary) {
	c := b.c
	b.references += s.ReferenceCount()
	c.keys.Append(s.Key)
	nar, ok := b.nars[s.NarKey]
	if !ok {
		nar = uint32(len(c.narSize))
		b.nars[s.NarKey] = nar
		c.narSize = append(c.narSize, s.FileSize)
		c.narKeys = append(c.narKeys, s.NarKey)
	}
	c.nar = append(c.nar, nar)
	c.narinfoSize = append(c.narinfoSize, s.NarinfoSize)
	c.lastPushed = append(c.lastPushed, s.LastPushedAt)
	c.pullRequestOnly = append(c.pullRequestOnly, s.PullRequestOnly)
}

// indexHashes ends the adding of paths.
func (b *catalogBuilder) indexHashes() {
	c := b.c
	b.nars = nil
	c.served = make([]int64, c.len())
	c.refStart = make([]uint32, 1, c.len()+1)
	c.refs = make([]uint32, 0, b.references)
	c.byPrefix = make([]uint32, 1<<16+1)
	id := 0
	for p := range 1 << 16 {
		for id < c.len() && prefixOf(c.key(uint32(id))) < p {
			id++
		}
		c.byPrefix[p] = uint32(id)
	}
	c.byPrefix[1<<16] = uint32(c.len())
}

// prefixOf is the two bytes key begins with, as a number; a shorter key
// sorts before every longer one with its first byte.
func prefixOf(key []byte) int {
	switch len(key) {
	case 0:
		return 0
	case 1:
		return int(key[0]) << 8
	}
	return int(key[0])<<8 | int(key[1])
}

func (b *catalogBuilder) served(key []byte, at time.Time) {
	if id, ok := b.c.find(key); ok {
		b.c.served[id] = at.UnixNano()
	}
}

// referencesOf takes the references of the next path, given by each.
func (b *catalogBuilder) referencesOf(each func(fn func(ref []byte))) {
	c := b.c
	self := b.next
	each(func(ref []byte) {
		if id, ok := c.find(ref); ok && id != self {
			c.refs = append(c.refs, id)
		}
	})
	c.refStart = append(c.refStart, uint32(len(c.refs)))
	b.next++
}

// storedSize counts the paths the index holds, and their bytes of NAR
// files and narinfos, a NAR that several paths name counted once, in 16
// bytes a path.
func storedSize(idx *index.Index) (paths int, size int64, err error) {
	type nar struct {
		key  uint64
		size int64
	}
	var nars []nar
	err = idx.Read(func(s index.Snapshot) error {
		return s.Summaries(func(sum *index.Summary) error {
			nars = append(nars, nar{sum.NarKey, sum.FileSize})
			size += sum.NarinfoSize
			return nil
		})
	})
	slices.SortFunc(nars, func(a, b nar) int { return cmp.Compare(a.key, b.key) })
	for i, n := range nars {
		if i == 0 || n.key != nars[i-1].key {
			size += n.size
		}
	}
	return len(nars), size, err
}

// loadCatalog reads the catalog of every path the index holds, from one
// snapshot of it.
func loadCatalog(idx *index.Index) (*catalog, error) {
	var b *catalogBuilder
	err := idx.Read(func(s index.Snapshot) error {
		b = newCatalogBuilder(s.Len())
		if err := s.Summaries(func(sum *index.Summary) error {
			b.add(sum)
			return nil
		}); err != nil {
			return err
		}
		b.indexHashes()
		if err := s.Served(func(key []byte, at time.Time) error {
			b.served(key, at)
			return nil
		}); err != nil {
			return err
		}
		return s.Summaries(func(sum *index.Summary) error {
			b.referencesOf(sum.References)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return b.c, nil
}
