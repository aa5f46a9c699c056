package caddynix

import (
	"context"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/activity"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

// sizeRecount is how often the samples count the cache's size again:
// counting lists the whole storage, so samples in between reuse it.
const sizeRecount = 10 * time.Minute

// serveObserver counts narinfo lookups for Prometheus and for the status
// page.
type serveObserver struct {
	metrics.Serve
	activity *activity.Recorder
}

func (o serveObserver) NarinfoLookup(result string) {
	o.Serve.NarinfoLookup(result)
	o.activity.NarinfoLookup(result)
}

// retentionObserver counts what retention does for Prometheus, and keeps
// the last collection for the status page.
type retentionObserver struct {
	metrics.Retention
	activity *activity.Recorder
}

func (o retentionObserver) Collected(cache string, report *retention.Report) {
	o.Retention.Collected(cache, report)
	if report.DryRun {
		return
	}
	o.activity.Collected(activity.Collection{
		At: time.Now(), Duration: report.Duration, Paths: report.Paths, Deleted: report.DeletedPaths,
		FreedBytes: report.FreedBytes, SizeAfter: report.SizeAfter, Protected: report.Protected,
	})
}

// notePush records a stored narinfo's pusher for the status page.
func (h *Handler) notePush(pusher *index.Pusher, into *overlay.Key, narBytes int64) {
	push := activity.Push{Tier: "trusted"}
	if into != nil {
		push.Tier = "overlay " + into.String()
	}
	switch {
	case pusher == nil:
	case pusher.Job != nil:
		push.Repository, push.RunID, push.RunURL, push.Ref = pusher.Job.Repository, pusher.Job.RunID, pusher.Job.RunURL, pusher.Job.Ref
	default:
		push.Token = pusher.Token
	}
	h.activity.Pushed(push, narBytes, time.Now())
}

// sampleActivity samples the cache every activity.SampleInterval until ctx
// ends.
func (h *Handler) sampleActivity(ctx context.Context) {
	ticker := time.NewTicker(activity.SampleInterval)
	defer ticker.Stop()
	var counted time.Time
	var bytes int64
	var paths int
	for {
		now := time.Now()
		if h.activity.Due(now) {
			if now.Sub(counted) >= sizeRecount {
				bytes, paths = h.cache.Stats(ctx)
				counted = now
			}
			h.activity.Add(h.activity.Current(now, bytes, paths))
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
