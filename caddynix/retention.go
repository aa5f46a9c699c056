package caddynix

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

// RetentionConfig makes the cache delete what it no longer needs, a whole
// closure at a time: a path goes only when no kept path references it, so
// every kept path can still be substituted with all it needs.
type RetentionConfig struct {
	// MaxSize is what the cache may hold, in bytes of NAR files and
	// narinfos: above it, the least recently served (or pushed) paths are
	// deleted until it is under it, those pushed only by pull-request jobs
	// first. Pinned closures, closures kept for CI runs and paths younger
	// than min_age stay even when they alone exceed it; the log says so.
	// Default: no limit. Caddyfile: `max_size 50GiB`.
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxAge deletes paths not served or pushed for this long (and not
	// needed by a kept path). Default: no limit. Caddyfile: `max_age 90d`.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// MinAge is how long after its last push a path is never deleted,
	// whatever its size or age, so uploads in flight are safe; a NAR whose
	// narinfo has not come is kept as long. 0 protects nothing by age, for
	// tests that collect at once. Default (when unset): 1h. Caddyfile:
	// `min_age 1h`.
	MinAge *caddy.Duration `json:"min_age,omitempty"`

	// Interval is how often the cache is collected. Default: 1h.
	// Caddyfile: `interval 1h`.
	Interval caddy.Duration `json:"interval,omitempty"`
}

const (
	defaultMinAge            = caddy.Duration(time.Hour)
	defaultRetentionInterval = caddy.Duration(time.Hour)
)

// policy is what one collection applies: the configuration's limits, or
// the command line's.
type policy struct {
	maxSize int64
	maxAge  time.Duration
	minAge  time.Duration
}

// retentionPlan is what a collection decides.
type retentionPlan struct {
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

// planRetention decides what a collection deletes. roots are the hash
// parts of paths whose closures are kept (pins, CI runs).
func planRetention(paths map[string]*index.Path, served map[string]time.Time, roots []string, pol policy, now time.Time) retentionPlan {
	plan := retentionPlan{Paths: len(paths)}
	graph := graphOf(paths)
	referrers := graph.referrers
	plan.SizeBefore = cacheSize(paths)

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
		if now.Sub(p.LastPushedAt) < pol.minAge {
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
		tooOld := pol.maxAge > 0 && now.Sub(ranks[hash].lastUsed) > pol.maxAge
		tooBig := pol.maxSize > 0 && size > pol.maxSize
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

// policy is what the retention block asks of a collection.
func (r *RetentionConfig) policy() policy {
	minAge := defaultMinAge
	if r.MinAge != nil {
		minAge = *r.MinAge
	}
	return policy{maxSize: r.MaxSize, maxAge: time.Duration(r.MaxAge), minAge: time.Duration(minAge)}
}

// setDefaults fills in what the retention block leaves out.
func (r *RetentionConfig) setDefaults() {
	if r.MinAge == nil {
		minAge := defaultMinAge
		r.MinAge = &minAge
	}
	if r.Interval == 0 {
		r.Interval = defaultRetentionInterval
	}
}

// validate checks a retention block.
func (r *RetentionConfig) validate() error {
	switch {
	case r.MaxSize < 0:
		return fmt.Errorf("retention: max_size %d must be positive", r.MaxSize)
	case r.MaxAge < 0 || (r.MinAge != nil && *r.MinAge < 0):
		return fmt.Errorf("retention: max_age must be a positive duration, min_age a positive duration or 0")
	case r.Interval < 0 || (r.Interval > 0 && time.Duration(r.Interval) < time.Second):
		return fmt.Errorf("retention: interval %s is too short: collect at most once a second", time.Duration(r.Interval))
	case r.MaxAge > 0 && r.MinAge != nil && r.MaxAge < *r.MinAge:
		return fmt.Errorf("retention: max_age %s is shorter than min_age %s, so paths would be kept past max_age", time.Duration(r.MaxAge), time.Duration(*r.MinAge))
	}
	return nil
}
