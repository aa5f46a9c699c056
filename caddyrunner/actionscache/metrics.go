package actionscache

import (
	"io"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
	"github.com/prometheus/client_golang/prometheus"
)

// The collectors are process-wide so that counts survive config reloads,
// labelled by the cache's name.
var (
	lookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "lookups_total",
		Help:      "Cache lookups by result: hit or miss.",
	}, []string{"cache", "result"})
	savedEntries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "saved_entries_total",
		Help:      "Entries saved by jobs.",
	}, []string{"cache"})
	evictedEntries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "evicted_entries_total",
		Help:      "Entries deleted by retention: unused for max_age, or beyond a repository's max_size.",
	}, []string{"cache"})
	uploadedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "uploaded_bytes_total",
		Help:      "Archive bytes received from jobs.",
	}, []string{"cache"})
	downloadedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "downloaded_bytes_total",
		Help:      "Archive bytes sent to jobs.",
	}, []string{"cache"})
	rejectedRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "rejected_requests_total",
		Help:      "Requests refused with a 4xx, by status code.",
	}, []string{"cache", "code"})
	storedEntries = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "entries",
		Help:      "Entries the cache holds.",
	}, []string{"cache"})
	storedBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "actions_cache",
		Name:      "stored_bytes",
		Help:      "Archive bytes the cache holds.",
	}, []string{"cache"})
)

func registerMetrics(registry prometheus.Registerer) error {
	return caddyutil.RegisterCollectors(registry, lookups, savedEntries, evictedEntries, uploadedBytes,
		downloadedBytes, rejectedRequests, storedEntries, storedBytes)
}

// knownMetrics starts the counters of the cache labelled label at zero, so
// that a rate or a hit ratio over them has a value before the first event
// rather than no series.
func knownMetrics(label string) {
	for _, result := range []string{"hit", "miss"} {
		lookups.WithLabelValues(label, result)
	}
	for _, vec := range []*prometheus.CounterVec{savedEntries, evictedEntries, uploadedBytes, downloadedBytes} {
		vec.WithLabelValues(label)
	}
}

// countingWriter counts the body bytes of a response, keeping
// io.ReaderFrom so that archives are still sent with sendfile.
type countingWriter struct {
	*caddyhttp.ResponseWriterWrapper
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriterWrapper.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.ResponseWriterWrapper.ReadFrom(r)
	c.n += n
	return n, err
}
