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
	webhooksTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "webhooks_total",
		Help: "Webhooks received by outcome: woke (a queued job the runner can run), ignored (another event or job), unsigned, bad_signature, too_large, bad_request.",
	}, []string{"outcome"})
	tasksFetched = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "tasks_fetched_total",
		Help: "Tasks taken from Gitea by what made the runner ask: webhook, or poll.",
	}, []string{"trigger"})
	lastWebhook = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "last_webhook_timestamp_seconds",
		Help: "When a webhook last woke the runner, in Unix time.",
	})
	lastPoll = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "last_poll_timestamp_seconds",
		Help: "When Gitea last answered a FetchTask, in Unix time.",
	})
	reportFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "report_failures_total",
		Help: "Log and state reports that Gitea did not take, by kind: log, state.",
	}, []string{"kind"})
	autoPushPaths = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "auto_push_paths_total",
		Help: "Store paths of automatic pushes by repository and outcome: pushed (stored by the job's credential), skipped (built, but the cache had them).",
	}, []string{"repository", "outcome"})
	autoPushFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "gitea_runner", Name: "auto_push_failures_total",
		Help: "Jobs whose automatic push failed, by repository.",
	}, []string{"repository"})
)

// The label values the runner knows of start at zero, so that a rate or a
// ratio over them has a value before the first event rather than no series.
func init() {
	for vec, values := range map[*prometheus.CounterVec][]string{
		pollsTotal:     {"task", "empty", "error"},
		tasksTotal:     {"success", "failure", "cancelled", "skipped"},
		webhooksTotal:  {"woke", "ignored", "unsigned", "bad_signature", "too_large", "bad_request"},
		tasksFetched:   {"webhook", "poll"},
		reportFailures: {"log", "state"},
	} {
		for _, value := range values {
			vec.WithLabelValues(value)
		}
	}
}

// registerMetrics adds the runner's collectors to a config's registry.
func registerMetrics(registry prometheus.Registerer) error {
	return caddyutil.RegisterCollectors(registry, pollsTotal, tasksTotal, tasksRunning, jobDuration, reportFailures,
		webhooksTotal, tasksFetched, lastWebhook, lastPoll, autoPushPaths, autoPushFailures)
}
