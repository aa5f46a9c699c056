// Package activity keeps, for each cache in the process, what its status
// page shows of it over time: requests and narinfo lookups counted since
// the process started, a sample of those counts and of the cache's size
// every minute for the last week, the runs and tokens that pushed last,
// and the last collection. It lives in memory only: a restart starts the
// charts again.
//
// A cache's Recorder outlives configuration reloads: For returns the same
// one for the same cache name for as long as the process runs.
package activity

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// SampleInterval is how often a cache is sampled.
	SampleInterval = time.Minute
	// History is how long samples are kept.
	History = 7 * 24 * time.Hour
	// pushesKept is how many pushers the recorder remembers.
	pushesKept = 50
)

// Sample is a cache at one moment: its counters, and its size as last
// counted.
type Sample struct {
	At            time.Time `json:"at"`
	Requests      int64     `json:"requests"`
	NarinfoServed int64     `json:"narinfo_served"`
	NarinfoMissed int64     `json:"narinfo_missed"`
	Bytes         int64     `json:"bytes"`
	Paths         int       `json:"paths"`
}

// Push is what one pusher (a CI run, or an upload token) stored lately.
type Push struct {
	// Repository, RunURL and Ref name the CI run that pushed; Token names
	// the upload token instead.
	Repository string `json:"repository,omitempty"`
	RunID      string `json:"run_id,omitempty"`
	RunURL     string `json:"run_url,omitempty"`
	Ref        string `json:"ref,omitempty"`
	Token      string `json:"token,omitempty"`
	// Tier is "trusted" for the cache proper, or the overlay pushed into.
	Tier     string    `json:"tier"`
	Paths    int       `json:"paths"`
	NarBytes int64     `json:"nar_bytes"`
	First    time.Time `json:"first"`
	Last     time.Time `json:"last"`
}

// key identifies a pusher.
func (p *Push) key() string {
	return p.Repository + "\x00" + p.RunID + "\x00" + p.Token + "\x00" + p.Tier
}

// Collection is what the last collection did.
type Collection struct {
	At         time.Time     `json:"at"`
	Duration   time.Duration `json:"duration_ns"`
	Paths      int           `json:"paths"`
	Deleted    int           `json:"deleted_paths"`
	FreedBytes int64         `json:"freed_bytes"`
	SizeAfter  int64         `json:"size_after"`
	// Protected is the size that pins, kept CI runs and min_age kept.
	Protected int64 `json:"protected_bytes"`
}

// Recorder is one cache's activity.
type Recorder struct {
	requests, narinfoServed, narinfoMissed atomic.Int64

	mu      sync.Mutex
	samples []Sample // oldest first, within History
	pushes  []Push   // most recent first
	// lastCollection is the last collection that was not a dry run.
	lastCollection *Collection
}

var recorders = struct {
	sync.Mutex
	byCache map[string]*Recorder
}{byCache: map[string]*Recorder{}}

// For returns the recorder of the cache named cache.
func For(cache string) *Recorder {
	recorders.Lock()
	defer recorders.Unlock()
	r, ok := recorders.byCache[cache]
	if !ok {
		r = new(Recorder)
		recorders.byCache[cache] = r
	}
	return r
}

// Request counts a request the cache answered.
func (r *Recorder) Request() { r.requests.Add(1) }

// NarinfoLookup counts a narinfo lookup: served or missing.
func (r *Recorder) NarinfoLookup(result string) {
	if result == "served" {
		r.narinfoServed.Add(1)
	} else {
		r.narinfoMissed.Add(1)
	}
}

// Current is a sample of the counters now, with the size given.
func (r *Recorder) Current(now time.Time, bytes int64, paths int) Sample {
	return Sample{At: now, Requests: r.requests.Load(), NarinfoServed: r.narinfoServed.Load(),
		NarinfoMissed: r.narinfoMissed.Load(), Bytes: bytes, Paths: paths}
}

// Due reports whether a sample taken at now would be the first in its
// interval: configurations overlapping in a reload sample once.
func (r *Recorder) Due(now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.samples) == 0 || now.Sub(r.samples[len(r.samples)-1].At) >= SampleInterval*9/10
}

// Add keeps a sample, and forgets those older than History.
func (r *Recorder) Add(s Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, s)
	cut := 0
	for cut < len(r.samples) && s.At.Sub(r.samples[cut].At) > History {
		cut++
	}
	if cut > 0 {
		r.samples = slices.Delete(r.samples, 0, cut)
	}
}

// Samples returns the samples kept, oldest first.
func (r *Recorder) Samples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.samples)
}

// Pushed records that a pusher stored a path whose NAR has narBytes.
func (r *Recorder) Pushed(p Push, narBytes int64, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := p.key()
	if i := slices.IndexFunc(r.pushes, func(q Push) bool { return q.key() == key }); i >= 0 {
		p = r.pushes[i]
		r.pushes = slices.Delete(r.pushes, i, i+1)
	} else {
		p.First = at
	}
	p.Paths++
	p.NarBytes += narBytes
	p.Last = at
	r.pushes = slices.Insert(r.pushes, 0, p)
	if len(r.pushes) > pushesKept {
		r.pushes = r.pushes[:pushesKept]
	}
}

// Pushes returns the pushers that stored paths last, most recent first.
func (r *Recorder) Pushes() []Push {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pushes)
}

// LastPush is when a path was last pushed, zero if none was since the
// process started.
func (r *Recorder) LastPush() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pushes) == 0 {
		return time.Time{}
	}
	return r.pushes[0].Last
}

// Collected records a collection.
func (r *Recorder) Collected(c Collection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastCollection = &c
}

// LastCollection returns the last collection recorded, or nil.
func (r *Recorder) LastCollection() *Collection {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastCollection == nil {
		return nil
	}
	c := *r.lastCollection
	return &c
}
