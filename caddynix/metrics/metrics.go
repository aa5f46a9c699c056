// Package metrics is what a nix_cache counts for Prometheus: requests and
// bytes served by kind and status, narinfo lookups, uploads by outcome and
// rejection reason, trusted pushes an overlay contradicts, and what
// collections find and free, by cache. The collectors are process-wide so
// that counts survive config reloads; Register adds them to each new
// config's registry.
//
// It implements the Metrics interfaces of serve, upload and retention, and
// knows nothing else of them.
package metrics

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/serve"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "requests_total",
		Help:      "Requests answered by the Nix cache, by kind (nix-cache-info, narinfo, nar, ls, log, realisation, landing, other) and status code.",
	}, []string{"kind", "code"})
	bytesServed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "response_bytes_total",
		Help:      "Response body bytes sent by the Nix cache, by kind.",
	}, []string{"kind"})
	narinfoLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "narinfo_lookups_total",
		Help:      "narinfo requests by result: served or missing.",
	}, []string{"result"})
	Uploads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "uploads_total",
		Help:      "Uploads by kind (nar, narinfo, ls, log, realisation, nix-cache-info) and outcome (stored, rejected, aborted, failed).",
	}, []string{"kind", "outcome"})
	uploadBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "upload_bytes_total",
		Help:      "Request body bytes received by uploads, by kind.",
	}, []string{"kind"})
	uploadRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "upload_rejections_total",
		Help:      "Uploads refused with a 4xx, by reason.",
	}, []string{"reason"})
	TierDivergence = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "tier_divergence_total",
		Help:      "Trusted pushes of a path that an overlay holds with another NAR: tampering, or a build that is not reproducible.",
	})
)

// Collectors of the storage and retention, labelled by cache (its name, or
// its root).
var (
	storedBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "stored_bytes",
		Help:      "Bytes of NAR files and narinfos the cache holds, as of its last indexing or collection.",
	}, []string{"cache"})
	storedPaths = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "stored_paths",
		Help:      "Store paths the cache holds, as of its last indexing or collection.",
	}, []string{"cache"})
	Protected = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "protected_bytes",
		Help:      "Bytes that retention keeps whatever its limits: pinned closures, closures of kept CI runs, paths younger than min_age.",
	}, []string{"cache"})
	gcRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "gc_runs_total",
		Help:      "Collections run by retention, the admin endpoint or the command line.",
	}, []string{"cache"})
	gcDeletedPaths = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "gc_deleted_paths_total",
		Help:      "Store paths deleted by collections and deletions.",
	}, []string{"cache"})
	gcFreedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "gc_freed_bytes_total",
		Help:      "Bytes freed by collections and deletions, orphaned NARs included.",
	}, []string{"cache"})
	indexRebuilds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "nix_cache",
		Name:      "index_rebuilds_total",
		Help:      "Times the index was built from the files: at start, after a lost or corrupt index, or on request.",
	}, []string{"cache"})
)

// Upload counts the bytes uploads bring, and the trusted pushes that an
// overlay's content contradicts.
type Upload struct{}

func (Upload) Received(kind string, bytes int64) {
	uploadBytes.WithLabelValues(kind).Add(float64(bytes))
}

func (Upload) Diverged() { TierDivergence.Inc() }

// UploadEnded counts an upload of kind by its outcome: stored, rejected
// (with reason), aborted or failed.
func UploadEnded(kind, outcome, reason string) {
	Uploads.WithLabelValues(kind, outcome).Inc()
	if reason != "" {
		uploadRejections.WithLabelValues(reason).Inc()
	}
}

// Retention counts what collections do in the collectors above.
type Retention struct{}

func (Retention) IndexRebuilt(cache string) { indexRebuilds.WithLabelValues(cache).Inc() }

func (m Retention) Collected(cache string, report *retention.Report) {
	gcRuns.WithLabelValues(cache).Inc()
	m.Deleted(cache, report)
	m.Stored(cache, report.Paths-report.DeletedPaths, report.SizeAfter)
	Protected.WithLabelValues(cache).Set(float64(report.Protected))
}

func (Retention) Deleted(cache string, report *retention.Report) {
	gcDeletedPaths.WithLabelValues(cache).Add(float64(report.DeletedPaths))
	gcFreedBytes.WithLabelValues(cache).Add(float64(report.FreedBytes))
}

func (Retention) Stored(cache string, paths int, size int64) {
	storedBytes.WithLabelValues(cache).Set(float64(size))
	storedPaths.WithLabelValues(cache).Set(float64(paths))
}

// The label values that do not depend on a cache start at zero, so that a
// rate or a ratio over them has a value before the first event rather than
// no series.
func init() {
	servedKinds[OtherKind] = newKindCounters(OtherKind)
	for kind := cacheurl.CacheInfo; kind <= cacheurl.Landing; kind++ {
		servedKinds[kind.String()] = newKindCounters(kind.String())
	}
	for kind := cacheurl.CacheInfo; kind < cacheurl.Landing; kind++ {
		uploadBytes.WithLabelValues(kind.String())
		for _, outcome := range []string{"stored", "rejected", "aborted", "failed"} {
			Uploads.WithLabelValues(kind.String(), outcome)
		}
	}
}

// Known starts the counters of cache at zero, for the same reason.
func (Retention) Known(cache string) {
	for _, vec := range []*prometheus.CounterVec{gcRuns, gcDeletedPaths, gcFreedBytes, indexRebuilds} {
		vec.WithLabelValues(cache)
	}
}

// Register adds the cache's collectors to a config's registry.
func Register(registry prometheus.Registerer) error {
	return caddyutil.RegisterCollectors(registry, requestsTotal, bytesServed, narinfoLookups, Uploads, uploadBytes, uploadRejections,
		TierDivergence, storedBytes, storedPaths, Protected, gcRuns, gcDeletedPaths, gcFreedBytes, indexRebuilds)
}

// Writer counts the status code and body bytes of a response. It keeps
// io.ReaderFrom, so that NARs are still sent with sendfile.
type Writer struct {
	*caddyhttp.ResponseWriterWrapper
	status int
	bytes  int64
}

func (m *Writer) WriteHeader(status int) {
	if m.status == 0 {
		m.status = status
	}
	m.ResponseWriterWrapper.WriteHeader(status)
}

func (m *Writer) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	n, err := m.ResponseWriterWrapper.Write(p)
	m.bytes += int64(n)
	return n, err
}

func (m *Writer) ReadFrom(r io.Reader) (int64, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	n, err := m.ResponseWriterWrapper.ReadFrom(r)
	m.bytes += n
	return n, err
}

// NewWriter wraps w to count its response.
func NewWriter(w http.ResponseWriter) *Writer {
	return &Writer{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
}

// Record counts a finished request of kind. A handler error carries the
// status the client will see.
func (m *Writer) Record(kind string, err error) {
	status := m.status
	if err != nil {
		status = http.StatusInternalServerError
		var herr caddyhttp.HandlerError
		if errors.As(err, &herr) && herr.StatusCode != 0 {
			status = herr.StatusCode
		}
	}
	if status == 0 {
		status = http.StatusOK
	}
	counters, ok := servedKinds[kind]
	if !ok {
		counters = newKindCounters(kind)
	}
	counters.requests(status).Inc()
	counters.bytes.Add(float64(m.bytes))
}

// kindCounters are the counters of one kind of request. A counter vector
// hashes and checks its label values on every lookup, which costs more
// than the count itself on a narinfo's path, so each is looked up once.
type kindCounters struct {
	kind     string
	bytes    prometheus.Counter
	byStatus sync.Map // status code → prometheus.Counter
}

func newKindCounters(kind string) *kindCounters {
	return &kindCounters{kind: kind, bytes: bytesServed.WithLabelValues(kind)}
}

// requests is the counter of the kind's requests answered with status.
func (k *kindCounters) requests(status int) prometheus.Counter {
	if counter, ok := k.byStatus.Load(status); ok {
		return counter.(prometheus.Counter)
	}
	counter, _ := k.byStatus.LoadOrStore(status, requestsTotal.WithLabelValues(k.kind, strconv.Itoa(status)))
	return counter.(prometheus.Counter)
}

// OtherKind is the kind of a request for no URL shape of a binary cache.
const OtherKind = "other"

// servedKinds holds the counters of every kind Record is given; it is
// built at init and only read after.
var servedKinds = map[string]*kindCounters{}

// Serve counts narinfo lookups.
type Serve struct{}

func (Serve) NarinfoLookup(result string) {
	switch result {
	case "served":
		narinfoServed.Inc()
	case "missing":
		narinfoMissing.Inc()
	default:
		narinfoLookups.WithLabelValues(result).Inc()
	}
}

// The narinfo lookups' counters, looked up once as kindCounters are.
var narinfoServed, narinfoMissing = narinfoLookups.WithLabelValues("served"), narinfoLookups.WithLabelValues("missing")

// Interface guards
var (
	_ retention.Metrics = Retention{}
	_ upload.Metrics    = Upload{}
	_ serve.Metrics     = Serve{}
)
