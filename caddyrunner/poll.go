package caddyrunner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"go.uber.org/zap"
)

const (
	// fetchTimeout bounds one FetchTask call.
	fetchTimeout = 5 * time.Second
	// maxBackoffShift caps the backoff after failed polls at
	// fetch_interval × 2^5, and maxFetchWait caps it absolutely.
	maxBackoffShift = 5
	maxFetchWait    = 5 * time.Second
)

// poll is the one poll loop: it takes a capacity slot before asking for a
// task, so a full runner asks for nothing.
func (d *daemon) poll(client runnerv1connect.RunnerServiceClient) {
	var tasksVersion int64
	empties, failures := 0, 0
	woken := false
	for {
		if !d.waitForSlot() {
			return
		}
		s := d.settings()
		d.declareIfChanged(client, s)
		trigger := "poll"
		if woken || d.takeNotification() {
			// Gitea may post the webhook before it raises the tasks
			// version; version 0 makes it look in its database.
			trigger, tasksVersion = "webhook", 0
		}
		woken = false

		// Not cancelled when polling stops: Gitea assigns the task before it
		// answers, so an abandoned request would leave the job claimed by
		// nobody until Gitea's zombie reaper finds it.
		ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
		resp, err := client.FetchTask(ctx, connect.NewRequest(&runnerv1.FetchTaskRequest{TasksVersion: tasksVersion}))
		cancel()
		if d.pollCtx.Err() != nil {
			if err == nil && resp.Msg.Task != nil {
				// Run it under the shutdown's grace: it finishes, or is
				// cancelled and reported, instead of being lost.
				d.start(client, resp.Msg.Task)
			}
			return
		}
		var task *runnerv1.Task
		failed := err != nil
		switch {
		case err != nil:
			pollsTotal.WithLabelValues("error").Inc()
			if isUnauthenticated(err) {
				err = fmt.Errorf("gitea no longer knows this runner (deleted?): %w; remove %s and restart to register again", err, d.store)
				d.setStopped(err)
				d.logger().Error("polling stopped", zap.Error(err))
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				d.setError(err)
				d.logger().Warn("fetching a task", zap.Error(err))
			}
		default:
			d.markPolled()
			if v := resp.Msg.TasksVersion; v > tasksVersion {
				tasksVersion = v
			}
			task = resp.Msg.Task
		}
		if task == nil {
			if failed {
				failures++
			} else {
				pollsTotal.WithLabelValues("empty").Inc()
				empties, failures = empties+1, 0
			}
			wait := pollWait(s, empties, failures)
			if failed {
				d.backOff(failures, wait)
			}
			live, notified := d.sleepOrWake(wait)
			if !live {
				return
			}
			woken = notified
			continue
		}
		pollsTotal.WithLabelValues("task").Inc()
		d.countFetched(trigger)
		// Version 0 makes Gitea look in its database again: another job may
		// have become ready at the version just seen.
		tasksVersion, empties, failures = 0, 0, 0
		d.start(client, task)
		if id := d.currentIdentity(); id != nil && id.Ephemeral {
			d.logger().Info("the ephemeral runner took its one job; polling stops", zap.Int64("task", task.Id))
			return
		}
	}
}

// takeNotification reports whether a webhook told of a job since the
// last poll, and clears that.
func (d *daemon) takeNotification() bool {
	select {
	case <-d.notified:
		return true
	default:
		return false
	}
}

// isUnauthenticated reports whether Gitea refused the runner's credentials.
// Gitea answers with a gRPC status that Connect clients see as an unknown
// error whose message names the code, so both forms count.
func isUnauthenticated(err error) bool {
	var cerr *connect.Error
	if errors.As(err, &cerr) && cerr.Code() == connect.CodeUnauthenticated {
		return true
	}
	return strings.Contains(err.Error(), "code = Unauthenticated")
}

// pollWait is the wait before the next poll, with ±20% jitter, after
// `empties` empty answers in a row or, while Gitea fails, `failures` failed
// polls in a row. Both start at fetch_interval and double from the second
// on: failures up to maxFetchWait (or fetch_interval_max if longer), empty
// answers up to fetch_interval_max, which by default is fetch_interval:
// polls that find nothing cost Gitea little (the tasks_version check), and
// pickup latency is what users see. With a webhook, which wakes the runner
// for each job, an idle runner polls only at the webhook's poll_interval.
func pollWait(s *settings, empties, failures int) time.Duration {
	if s.webhook != nil && failures == 0 {
		return jitter(s.webhook.pollInterval)
	}
	n, ceiling := empties, max(s.fetchMax, s.fetchInterval)
	if failures > 0 {
		n, ceiling = failures, max(maxFetchWait, ceiling)
	}
	wait := s.fetchInterval
	if n > 1 {
		wait = min(s.fetchInterval<<min(n-1, maxBackoffShift), ceiling)
	}
	return jitter(wait)
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// sleep waits for d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// sleepOrWake waits for d, a settings change, a webhook or the end of
// polling, and reports whether polling goes on and whether a webhook
// ended the wait.
func (d *daemon) sleepOrWake(wait time.Duration) (live, notified bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-d.pollCtx.Done():
		return false, false
	case <-t.C:
	case <-d.wakeup:
	case <-d.notified:
		return true, true
	}
	return true, false
}

// waitForSlot blocks until fewer tasks run than the capacity allows and the
// runner is not drained.
func (d *daemon) waitForSlot() bool {
	for {
		d.mu.Lock()
		free := !d.draining && len(d.running) < d.settings().capacity
		d.mu.Unlock()
		if free {
			return true
		}
		select {
		case <-d.pollCtx.Done():
			return false
		case <-d.wakeup:
		}
	}
}

// declareIfChanged sends the labels to Gitea when they differ from what it
// was last told. A failure is logged and retried at the next poll: Declare
// never stops the runner.
func (d *daemon) declareIfChanged(client runnerv1connect.RunnerServiceClient, s *settings) {
	names := s.labels.names()
	d.mu.Lock()
	same := slices.Equal(d.declared, names)
	d.mu.Unlock()
	if same {
		return
	}
	ctx, cancel := context.WithTimeout(d.pollCtx, rpcTimeout)
	defer cancel()
	_, err := client.Declare(ctx, connect.NewRequest(&runnerv1.DeclareRequest{Version: runnerVersion, Labels: names}))
	if err != nil {
		var cerr *connect.Error
		if errors.As(err, &cerr) && cerr.Code() == connect.CodeUnimplemented {
			d.logger().Warn("Gitea is older than 1.21 and cannot take label changes without registering again")
		} else {
			d.setError(err)
			d.logger().Warn("declaring labels", zap.Strings("labels", names), zap.Error(err))
			return
		}
	} else {
		d.logger().Info("declared labels", zap.Strings("labels", names))
	}
	d.mu.Lock()
	d.declared = names
	d.mu.Unlock()
	// Keep the stored identity's labels current, as act_runner does.
	if id := d.currentIdentity(); id != nil && !slices.Equal(id.Labels, s.labelSpecs) {
		updated := *id
		updated.Labels = s.labelSpecs
		if err := d.store.save(ctx, &updated); err == nil {
			d.mu.Lock()
			d.id = &updated
			d.mu.Unlock()
		}
	}
}
