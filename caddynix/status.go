package caddynix

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/activity"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
)

// pinsTTL is how long the status of a cache reuses the pins it read:
// each pin is an object of its own.
const pinsTTL = 30 * time.Second

// CacheStatus is what the status page shows of one running cache. It
// holds nothing secret: public keys, never secret keys, tokens' names,
// never their values, and no storage credential.
type CacheStatus struct {
	Name string `json:"name"`
	// URL is the configured url, or empty when the cache answers at the
	// URL each request was sent to.
	URL string `json:"url,omitempty"`
	// Storage is where the cache keeps its files: a directory, or an S3
	// bucket and prefix.
	Storage    string   `json:"storage"`
	Shared     bool     `json:"shared"`
	PublicKeys []string `json:"public_keys"`
	// Sources are the live store and upstreams answering after the cache.
	Sources []string `json:"sources,omitempty"`
	// Paths and StoredBytes are the cache's content as last counted, and
	// MaxSize the retention's limit (0: none).
	Paths       int    `json:"paths"`
	StoredBytes int64  `json:"stored_bytes"`
	MaxSize     int64  `json:"max_size,omitempty"`
	Retention   string `json:"retention,omitempty"`
	// Now is the cache's counters at the time of the status, and Samples
	// those of the last week.
	Now     activity.Sample   `json:"now"`
	Samples []activity.Sample `json:"samples"`
	// Pushes are the runs and tokens that pushed last, most recent first.
	Pushes []activity.Push `json:"pushes"`
	Pins   []retention.Pin `json:"pins"`
	// PinsError says why the pins could not be read.
	PinsError      string               `json:"pins_error,omitempty"`
	LastCollection *activity.Collection `json:"last_collection,omitempty"`
	// LeaseHolder is the node collecting a shared cache right now, if
	// any, and LeaseUntil when its lease ends unless renewed.
	LeaseHolder string     `json:"lease_holder,omitempty"`
	LeaseUntil  *time.Time `json:"lease_until,omitempty"`
}

// Caches returns the status of every cache this process serves, by name.
func Caches(ctx context.Context) []CacheStatus {
	runningCaches.Lock()
	handlers := make([]*Handler, 0, len(runningCaches.byLabel))
	for _, h := range runningCaches.byLabel {
		handlers = append(handlers, h)
	}
	runningCaches.Unlock()
	statuses := make([]CacheStatus, 0, len(handlers))
	for _, h := range handlers {
		statuses = append(statuses, h.status(ctx))
	}
	slices.SortFunc(statuses, func(a, b CacheStatus) int { return cmp.Compare(a.Name, b.Name) })
	return statuses
}

func (h *Handler) status(ctx context.Context) CacheStatus {
	bytes, paths := h.cache.Stats(ctx)
	st := CacheStatus{
		Name:           h.cacheLabel(),
		URL:            h.url,
		Storage:        h.storageDescription(),
		PublicKeys:     h.publicKeyStrings(),
		Sources:        h.sources.Names(),
		Paths:          paths,
		StoredBytes:    bytes,
		Retention:      h.retentionSummary(bytes),
		Now:            h.activity.Current(time.Now(), bytes, paths),
		Samples:        h.activity.Samples(),
		Pushes:         h.activity.Pushes(),
		LastCollection: h.activity.LastCollection(),
	}
	if h.Retention != nil {
		st.MaxSize = int64(h.Retention.MaxSize)
	}
	if h.Storage != nil && h.Storage.S3 != nil {
		st.Shared = true
		if holder, until, err := retention.CollectionLease(ctx, h.store); err != nil {
			st.LeaseHolder = "unknown: " + err.Error()
		} else if holder != "" {
			st.LeaseHolder, st.LeaseUntil = holder, &until
		}
	}
	st.Pins, st.PinsError = h.pins.get(ctx, h)
	return st
}

// storageDescription says where the cache keeps its files.
func (h *Handler) storageDescription() string {
	switch {
	case h.Storage != nil && h.Storage.S3 != nil:
		return "s3 " + h.Storage.S3.Bucket + "/" + h.Storage.S3.Prefix
	case h.root != "":
		return "directory " + h.root
	default:
		return "none"
	}
}

// pinsSeen is the pins a status read last.
type pinsSeen struct {
	mu   sync.Mutex
	at   time.Time
	pins []retention.Pin
	err  string
}

func (p *pinsSeen) get(ctx context.Context, h *Handler) ([]retention.Pin, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < pinsTTL {
		return p.pins, p.err
	}
	p.pins, p.err = []retention.Pin{}, ""
	if idx := h.state.Index(); idx != nil {
		pins, err := h.collector(idx).Pins(ctx)
		if err != nil {
			p.err = err.Error()
		} else {
			p.pins = pins
		}
	}
	p.at = time.Now()
	return p.pins, p.err
}
