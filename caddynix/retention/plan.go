// Package retention decides what a nix_cache deletes and deletes it: the
// plan (pure: which paths go, whole closures at a time, least recently
// used first), the Collector that carries it out against a storage and
// its index, the pins and CI run records that keep closures, the use
// times nodes share, and, when several nodes share a storage, the
// collection lease and the announcement that keeps uploads on other nodes
// from committing what a collection deletes.
//
// It knows the storage, the index and the narinfo rule, and nothing of
// Caddy or HTTP: the nix_cache handler, its admin routes and the
// `caddy nix-cache` commands drive it, and uploads take its gate (State).
package retention

import (
	"bytes"
	"cmp"
	"slices"
	"time"
)

// DefaultMinAge is how long after its last push a path is kept when a
// collection's policy does not say.
const DefaultMinAge = time.Hour

// Policy is what one collection applies: a retention block's limits, or a
// command line's. Zero limits are no limits.
type Policy struct {
	// MaxSize is the bytes of NAR files and narinfos the cache may hold.
	MaxSize int64
	// MaxAge deletes paths not served or pushed for this long.
	MaxAge time.Duration
	// MinAge keeps paths pushed more recently, whatever the limits.
	MinAge time.Duration
	// OverlayMaxAge drops an overlay whose ref pushed nothing for this
	// long.
	OverlayMaxAge time.Duration
}

// plan is what a collection decides, of the paths of a catalog.
type plan struct {
	// delete are the paths to delete, every path before those it
	// references, so that stopping half-way never leaves a kept path with
	// a missing reference.
	delete []uint32
	// nars are paths whose NAR files no kept path names any more, one
	// path for each file.
	nars []uint32
	// sizeBefore and sizeAfter are the bytes of NAR files and narinfos.
	sizeBefore, sizeAfter int64
	// protected is the size of what must stay whatever the limits: pinned
	// closures, closures of kept CI runs and paths younger than min_age.
	protected int64
}

// usage orders paths by how much they are wanted: pull-request pushes
// below everything else, then by last use.
type usage struct {
	wanted   bool  // pushed by anything but a pull-request job
	lastUsed int64 // Unix nanoseconds
}

func (u usage) compare(o usage) int {
	if u.wanted != o.wanted {
		if u.wanted {
			return 1
		}
		return -1
	}
	return cmp.Compare(u.lastUsed, o.lastUsed)
}

// referrersOf returns, for each path of c, the paths that reference it.
func referrersOf(c *catalog) func(id uint32) []uint32 {
	start := make([]uint32, c.len()+1)
	for _, ref := range c.refs {
		start[ref+1]++
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	referrers := make([]uint32, len(c.refs))
	next := slices.Clone(start[:c.len()])
	for id := range uint32(c.len()) {
		for _, ref := range c.references(id) {
			referrers[next[ref]] = id
			next[ref]++
		}
	}
	return func(id uint32) []uint32 { return referrers[start[id]:start[id+1]] }
}

// planCollection decides what a collection of the paths of c deletes.
// roots are the hash parts of paths whose closures are kept (pins, CI
// runs).
func planCollection(c *catalog, roots []string, pol Policy, now time.Time) plan {
	n := c.len()
	p := plan{sizeBefore: c.size()}
	referrers := referrersOf(c)
	narUsers := make([]int32, len(c.narSize))
	for _, nar := range c.nar {
		narUsers[nar]++
	}
	nowNano := now.UnixNano()

	// What must stay: the closures of the roots and of young paths.
	protected := make([]bool, n)
	var protect func(id uint32)
	protect = func(id uint32) {
		if protected[id] {
			return
		}
		protected[id] = true
		for _, ref := range c.references(id) {
			protect(ref)
		}
	}
	for _, hash := range roots {
		if id, ok := c.findHash(hash); ok {
			protect(id)
		}
	}
	for id := range uint32(n) {
		if c.lastPushed[id] != 0 && nowNano-c.lastPushed[id] < int64(pol.MinAge) {
			protect(id)
		}
	}
	protectedNars := make([]bool, len(c.narSize))
	for id := range uint32(n) {
		if !protected[id] {
			continue
		}
		if nar := c.nar[id]; !protectedNars[nar] {
			protectedNars[nar] = true
			p.protected += c.narSize[nar]
		}
		p.protected += c.narinfoSize[id]
	}

	// A path is as wanted as the most wanted path that needs it, and
	// comes after every path that references it.
	const (
		unranked = iota
		ranking  // its referrers are being ranked: a reference cycle
		ranked
	)
	state := make([]uint8, n)
	wanted := make([]usage, n)
	lastUsed := make([]int64, n) // the latest use of it or anything needing it
	depth := make([]int32, n)    // longest chain of referrers above it
	var rank func(id uint32)
	rank = func(id uint32) {
		if state[id] != unranked {
			return
		}
		state[id] = ranking
		wanted[id] = usage{wanted: !c.pullRequestOnly[id], lastUsed: c.lastUsed(id)}
		lastUsed[id] = wanted[id].lastUsed
		for _, above := range referrers(id) {
			rank(above)
			if state[above] != ranked {
				continue
			}
			if wanted[above].compare(wanted[id]) > 0 {
				wanted[id] = wanted[above]
			}
			lastUsed[id] = max(lastUsed[id], lastUsed[above])
			depth[id] = max(depth[id], depth[above]+1)
		}
		state[id] = ranked
	}
	order := make([]uint32, 0, n)
	for id := range uint32(n) {
		rank(id)
		if !protected[id] {
			order = append(order, id)
		}
	}
	slices.SortFunc(order, func(a, b uint32) int {
		return cmp.Or(wanted[a].compare(wanted[b]), cmp.Compare(depth[a], depth[b]), bytes.Compare(c.key(a), c.key(b)))
	})

	size := p.sizeBefore
	deleted := make([]bool, n)
	for _, id := range order {
		tooOld := pol.MaxAge > 0 && nowNano-lastUsed[id] > int64(pol.MaxAge)
		tooBig := pol.MaxSize > 0 && size > pol.MaxSize
		if !tooOld && !tooBig {
			continue
		}
		if slices.ContainsFunc(referrers(id), func(r uint32) bool { return !deleted[r] }) {
			continue // still needed by a kept path
		}
		deleted[id] = true
		p.delete = append(p.delete, id)
		size -= c.narinfoSize[id]
		nar := c.nar[id]
		if narUsers[nar]--; narUsers[nar] == 0 {
			p.nars = append(p.nars, id)
			size -= c.narSize[nar]
		}
	}
	p.sizeAfter = size
	return p
}
