package caddyrunner

import (
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
	"github.com/prometheus/client_golang/prometheus"
)

// The collectors are process-wide so that counts survive config reloads;
// each new config's registry gets them registered again.
var (
	pollsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "polls_total",
		Help: "FetchTask calls by outcome: task, empty, error.",
	}, []string{"outcome"})
	tasksTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "tasks_total",
		Help: "Finished tasks by result: success, failure, cancelled, skipped.",
	}, []string{"result"})
	tasksRunning = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "tasks_running",
		Help: "Tasks running now.",
	})
	jobDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "job_duration_seconds",
		Help:    "How long tasks ran.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 16),
	})
	reportFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "report_failures_total",
		Help: "Log and state reports that Gitea did not take, by kind: log, state.",
	}, []string{"kind"})
)

// registerMetrics adds the runner's collectors to a config's registry.
func registerMetrics(registry prometheus.Registerer) error {
	return caddyutil.RegisterCollectors(registry, pollsTotal, tasksTotal, tasksRunning, jobDuration, reportFailures)
}
