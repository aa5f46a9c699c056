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
	"cmp"
	"slices"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
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

// Plan is what a collection decides.
type Plan struct {
	// Delete are the paths to delete, every path before those it
	// references, so that stopping half-way never leaves a kept path with
	// a missing reference.
	Delete []*index.Path
	// Nars are the NAR files that no kept path names any more.
	Nars []string
	// SizeBefore and SizeAfter are the bytes of NAR files and narinfos.
	SizeBefore, SizeAfter int64
	// Protected is the size of what must stay whatever the limits: pinned
	// closures, closures of kept CI runs and paths younger than min_age.
	Protected int64
	// Paths is how many paths there are before the collection.
	Paths int
}

// usage orders paths by how much they are wanted: pull-request pushes
// below everything else, then by last use.
type usage struct {
	wanted   bool // pushed by anything but a pull-request job
	lastUsed time.Time
}

func (u usage) compare(o usage) int {
	if u.wanted != o.wanted {
		if u.wanted {
			return 1
		}
		return -1
	}
	return u.lastUsed.Compare(o.lastUsed)
}

// referenceGraph is which indexed paths reference each path, and how many
// name each NAR file.
type referenceGraph struct {
	referrers map[string][]string
	narUsers  map[string]int
}

func graphOf(paths map[string]*index.Path) referenceGraph {
	g := referenceGraph{referrers: make(map[string][]string, len(paths)), narUsers: map[string]int{}}
	for hash, p := range paths {
		for _, ref := range p.References {
			if _, ok := paths[ref]; ok {
				g.referrers[ref] = append(g.referrers[ref], hash)
			}
		}
		g.narUsers[p.NarURL]++
	}
	return g
}

// releaseNar counts p as deleted, and reports whether no path names its
// NAR file any more.
func (g referenceGraph) releaseNar(p *index.Path) bool {
	g.narUsers[p.NarURL]--
	return g.narUsers[p.NarURL] == 0
}

// PlanCollection decides what a collection deletes. roots are the hash
// parts of paths whose closures are kept (pins, CI runs).
func PlanCollection(paths map[string]*index.Path, served map[string]time.Time, roots []string, pol Policy, now time.Time) Plan {
	plan := Plan{Paths: len(paths)}
	graph := graphOf(paths)
	referrers := graph.referrers
	plan.SizeBefore = CacheSize(paths)

	// What must stay: the closures of the roots and of young paths.
	protected := map[string]bool{}
	var protect func(hash string)
	protect = func(hash string) {
		p, ok := paths[hash]
		if !ok || protected[hash] {
			return
		}
		protected[hash] = true
		for _, ref := range p.References {
			protect(ref)
		}
	}
	for _, hash := range roots {
		protect(hash)
	}
	for hash, p := range paths {
		if now.Sub(p.LastPushedAt) < pol.MinAge {
			protect(hash)
		}
	}
	protectedNars := map[string]bool{}
	for hash := range protected {
		p := paths[hash]
		if !protectedNars[p.NarURL] {
			protectedNars[p.NarURL] = true
			plan.Protected += p.FileSize
		}
		plan.Protected += p.NarinfoSize
	}

	// A path is as wanted as the most wanted path that needs it, and
	// comes after every path that references it.
	own := func(hash string) usage {
		p := paths[hash]
		last := p.LastPushedAt
		if at, ok := served[hash]; ok && at.After(last) {
			last = at
		}
		return usage{wanted: !p.PullRequestOnly, lastUsed: last}
	}
	type rank struct {
		wanted   usage
		lastUsed time.Time // the latest use of it or anything needing it
		depth    int       // longest chain of referrers above it
		done     bool
	}
	ranks := make(map[string]*rank, len(paths))
	var rankOf func(hash string) *rank
	rankOf = func(hash string) *rank {
		if r, ok := ranks[hash]; ok {
			return r // done, or a reference cycle being walked
		}
		u := own(hash)
		r := &rank{wanted: u, lastUsed: u.lastUsed}
		ranks[hash] = r
		for _, referrer := range referrers[hash] {
			above := rankOf(referrer)
			if !above.done {
				continue
			}
			if above.wanted.compare(r.wanted) > 0 {
				r.wanted = above.wanted
			}
			if above.lastUsed.After(r.lastUsed) {
				r.lastUsed = above.lastUsed
			}
			r.depth = max(r.depth, above.depth+1)
		}
		r.done = true
		return r
	}
	order := make([]string, 0, len(paths))
	for hash := range paths {
		rankOf(hash)
		if !protected[hash] {
			order = append(order, hash)
		}
	}
	slices.SortFunc(order, func(a, b string) int {
		ra, rb := ranks[a], ranks[b]
		return cmp.Or(ra.wanted.compare(rb.wanted), cmp.Compare(ra.depth, rb.depth), cmp.Compare(a, b))
	})

	size := plan.SizeBefore
	deleted := map[string]bool{}
	for _, hash := range order {
		tooOld := pol.MaxAge > 0 && now.Sub(ranks[hash].lastUsed) > pol.MaxAge
		tooBig := pol.MaxSize > 0 && size > pol.MaxSize
		if !tooOld && !tooBig {
			continue
		}
		if slices.ContainsFunc(referrers[hash], func(r string) bool { return !deleted[r] }) {
			continue // still needed by a kept path
		}
		p := paths[hash]
		deleted[hash] = true
		plan.Delete = append(plan.Delete, p)
		size -= p.NarinfoSize
		if graph.releaseNar(p) {
			plan.Nars = append(plan.Nars, p.NarURL)
			size -= p.FileSize
		}
	}
	plan.SizeAfter = size
	return plan
}

// CacheSize is the bytes of NAR files and narinfos of paths, a NAR that
// several paths name counted once.
func CacheSize(paths map[string]*index.Path) int64 {
	var size int64
	nars := map[string]bool{}
	for _, p := range paths {
		if !nars[p.NarURL] {
			nars[p.NarURL] = true
			size += p.FileSize
		}
		size += p.NarinfoSize
	}
	return size
}
