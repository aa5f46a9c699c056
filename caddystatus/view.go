package caddystatus

import (
	"cmp"
	"fmt"
	"html/template"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix"
	"github.com/cargoxx-pkgs/runner/caddynix/activity"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddyrunner"
	"github.com/dustin/go-humanize"
)

// finishedShown is how many finished jobs the page lists.
const finishedShown = 50

// finishedUnfolded is how many finished jobs show before the rest are
// folded away.
const finishedUnfolded = 10

// pushesUnfolded is how many of a cache's pushes show before the rest are
// folded away.
const pushesUnfolded = 10

// pinsShown is how many pins of a cache the page lists by name.
const pinsShown = 100

// The time spans of the charts.
const (
	sizeSpan    = activity.History
	requestSpan = 24 * time.Hour
)

// pageView is a snapshot arranged for the page.
type pageView struct {
	Snapshot
	// Glance is the page's first line: the host in a few words.
	Glance   []string
	Running  []jobView
	Finished []jobView
	// FinishedFirst are the finished jobs shown at once, the rest folded.
	FinishedFirst int
	Caches        []cacheView
	// Refresh is how often the page updates, in milliseconds, and
	// NoScriptRefresh in seconds when the browser runs no script.
	Refresh         int64
	NoScriptRefresh int
}

// jobView is a job with the runner that runs it.
type jobView struct {
	caddyrunner.JobStatus
	Runner string
	// Took is how long it ran, or runs so far.
	Took time.Duration
}

// cacheView is a cache with its figures worked out.
type cacheView struct {
	caddynix.CacheStatus
	SizeChart    template.HTML
	RequestChart template.HTML
	// HitRate is the share of narinfo lookups served since the process
	// started; HitRateHour that of the last hour; empty without lookups.
	HitRate     string
	HitRateHour string
	// RequestsPerMinute is over the last minutes sampled.
	RequestsPerMinute string
	Fill              string // stored bytes against max_size
	PinsShown         []retention.Pin
	// PushesFirst are the pushes shown at once, the rest folded.
	PushesFirst int
	PinsMore    int
	LastPush    time.Time
}

// arrange arranges a snapshot for the page.
func arrange(s Snapshot, refresh time.Duration) pageView {
	view := pageView{Snapshot: s, Refresh: refresh.Milliseconds(), NoScriptRefresh: max(30, int(refresh.Seconds()))}
	now := s.Generated
	for _, r := range s.Runners {
		for _, job := range r.Running {
			view.Running = append(view.Running, jobView{JobStatus: job, Runner: r.Name, Took: now.Sub(job.Started)})
		}
		for _, job := range r.Finished {
			took := time.Duration(0)
			if job.Finished != nil {
				took = job.Finished.Sub(job.Started)
			}
			view.Finished = append(view.Finished, jobView{JobStatus: job, Runner: r.Name, Took: took})
		}
	}
	slices.SortFunc(view.Running, func(a, b jobView) int { return a.Started.Compare(b.Started) })
	slices.SortFunc(view.Finished, func(a, b jobView) int { return cmp.Compare(finishedAt(b), finishedAt(a)) })
	if len(view.Finished) > finishedShown {
		view.Finished = view.Finished[:finishedShown]
	}
	view.FinishedFirst = min(len(view.Finished), finishedUnfolded)
	for _, c := range s.Caches {
		view.Caches = append(view.Caches, arrangeCache(c, now))
	}
	view.Glance = glance(view)
	return view
}

// glance says in a few words what the host does: its runners by state,
// the jobs running and those of the last hour, and how full its caches
// are.
func glance(view pageView) []string {
	var words []string
	if n := len(view.Runners); n > 0 {
		states := map[string]int{}
		var order []string
		for _, r := range view.Runners {
			if states[r.State] == 0 {
				order = append(order, r.State)
			}
			states[r.State]++
		}
		var parts []string
		for _, state := range order {
			parts = append(parts, fmt.Sprintf("%d %s", states[state], state))
		}
		words = append(words, fmt.Sprintf("%s: %s", plural(n, "runner"), strings.Join(parts, ", ")))
	}
	words = append(words, plural(len(view.Running), "job")+" running")
	results := map[string]int{}
	for _, job := range view.Finished {
		if job.Finished != nil && view.Generated.Sub(*job.Finished) <= time.Hour {
			results[job.Result]++
		}
	}
	if len(results) > 0 {
		var parts []string
		for _, result := range slices.Sorted(maps.Keys(results)) {
			parts = append(parts, fmt.Sprintf("%d %s", results[result], result))
		}
		words = append(words, "last hour: "+strings.Join(parts, ", "))
	}
	for _, c := range view.Caches {
		size := "cache " + c.Name + " " + bytesLabel(float64(c.StoredBytes))
		if c.Fill != "" {
			size += " (" + c.Fill + " of max_size)"
		}
		words = append(words, size)
	}
	return words
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func finishedAt(j jobView) int64 {
	if j.Finished == nil {
		return 0
	}
	return j.Finished.UnixNano()
}

func arrangeCache(c caddynix.CacheStatus, now time.Time) cacheView {
	view := cacheView{CacheStatus: c}
	samples := append(slices.Clone(c.Samples), c.Now)

	sizeFrom := now.Add(-sizeSpan)
	var sizes []point
	for _, s := range samples {
		if !s.At.Before(sizeFrom) {
			sizes = append(sizes, point{s.At, float64(s.Bytes)})
		}
	}
	view.SizeChart = chart{title: "stored bytes, last 7 days", from: sizeFrom, to: now,
		points: thin(sizes, sizeFrom, now), limit: float64(c.MaxSize), format: bytesLabel}.svg()

	requestFrom := now.Add(-requestSpan)
	var recent []activity.Sample
	for _, s := range samples {
		if !s.At.Before(requestFrom) {
			recent = append(recent, s)
		}
	}
	view.RequestChart = chart{title: "requests per minute, last 24 hours", from: requestFrom, to: now,
		points: requestRates(recent, requestFrom, now), format: countLabel}.svg()

	view.HitRate = hitRate(c.Now.NarinfoServed, c.Now.NarinfoMissed)
	if hourAgo, ok := sampleBefore(c.Samples, now.Add(-time.Hour)); ok {
		view.HitRateHour = hitRate(c.Now.NarinfoServed-hourAgo.NarinfoServed, c.Now.NarinfoMissed-hourAgo.NarinfoMissed)
	}
	if n := len(c.Samples); n > 0 {
		last := c.Samples[max(0, n-5)]
		if minutes := now.Sub(last.At).Minutes(); minutes >= 0.5 {
			view.RequestsPerMinute = fmt.Sprintf("%.1f", float64(c.Now.Requests-last.Requests)/minutes)
		}
	}
	if c.MaxSize > 0 {
		view.Fill = fmt.Sprintf("%.0f%%", 100*float64(c.StoredBytes)/float64(c.MaxSize))
	}
	view.PushesFirst = min(len(c.Pushes), pushesUnfolded)
	view.PinsShown = c.Pins[:min(len(c.Pins), pinsShown)]
	view.PinsMore = len(c.Pins) - len(view.PinsShown)
	if len(c.Pushes) > 0 {
		view.LastPush = c.Pushes[0].Last
	}
	return view
}

// requestRates is the requests per minute between samples, over at most
// chartPoints slices of [from, to].
func requestRates(samples []activity.Sample, from, to time.Time) []point {
	ends := make([]point, len(samples))
	for i, s := range samples {
		ends[i] = point{s.At, float64(s.Requests)}
	}
	ends = thin(ends, from, to)
	var rates []point
	for i := 1; i < len(ends); i++ {
		minutes := ends[i].at.Sub(ends[i-1].at).Minutes()
		if minutes <= 0 {
			continue
		}
		rates = append(rates, point{ends[i].at, max(0, ends[i].value-ends[i-1].value) / minutes})
	}
	return rates
}

// sampleBefore returns the last sample taken at or before t.
func sampleBefore(samples []activity.Sample, t time.Time) (activity.Sample, bool) {
	i, _ := slices.BinarySearchFunc(samples, t, func(s activity.Sample, t time.Time) int {
		if s.At.After(t) {
			return 1
		}
		return -1
	})
	if i == 0 {
		return activity.Sample{}, false
	}
	return samples[i-1], true
}

func hitRate(served, missed int64) string {
	if served+missed <= 0 {
		return ""
	}
	return fmt.Sprintf("%.1f%% of %d", 100*float64(served)/float64(served+missed), served+missed)
}

func bytesLabel(v float64) string { return humanize.IBytes(uint64(v)) }

func countLabel(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return humanize.SIWithDigits(v, 0, "")
}
