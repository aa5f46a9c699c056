package caddyrunner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"go.uber.org/zap"
)

// runnerVersion is sent to Gitea at registration and with every Declare.
const runnerVersion = "cargoxx-runner"

const (
	// fetchTimeout bounds one FetchTask call.
	fetchTimeout = 5 * time.Second
	// maxBackoffShift caps the backoff after failed polls at
	// fetch_interval × 2^5, and maxFetchWait caps it absolutely.
	maxBackoffShift = 5
	maxFetchWait    = 5 * time.Second
)

// settings are the parts of the configuration a reload may change while the
// daemon keeps running.
type settings struct {
	name           string
	labelSpecs     []string
	labels         labelSet
	capacity       int
	fetchInterval  time.Duration
	fetchMax       time.Duration // 0: no backoff on empty polls
	timeout        time.Duration
	shutdown       time.Duration
	env            map[string]string
	container      ContainerConfig
	workdirParent  string
	actionCacheDir string
	jobFilesDir    string
	nixCache       string
	// keepRuns is how many successful default-branch runs per repository
	// the cache keeps.
	keepRuns     int
	registration registration
}

// registration is how to register when no identity is stored yet.
type registration struct {
	token    string
	apiToken string
	scope    string
}

// daemon is one registered runner: it registers once, declares its labels,
// polls Gitea and runs tasks. It outlives config reloads: every app using
// the same identity shares it through a caddy.UsagePool, hands it its
// settings, and the last one to stop ends it.
type daemon struct {
	instance string
	store    identityStore
	release  func() // the identity lock

	cfg    atomic.Pointer[settings]
	log    atomic.Pointer[zap.Logger]
	wakeup chan struct{} // settings changed, or a task ended

	pollCtx    context.Context // ends polling
	stopPoll   context.CancelFunc
	jobsCtx    context.Context // ends running jobs
	cancelJobs context.CancelFunc
	pollDone   chan struct{}
	tasks      sync.WaitGroup

	mu       sync.Mutex
	id       *identity
	declared []string
	running  map[int64]*runningTask
	draining bool
	lastPoll time.Time
	lastErr  string
}

// runningTask is what the status endpoint shows of a task.
type runningTask struct {
	ID         int64     `json:"id"`
	Repository string    `json:"repository"`
	Job        string    `json:"job"`
	Started    time.Time `json:"started"`
}

func newDaemon(instance string, store identityStore, s *settings, logger *zap.Logger) (*daemon, error) {
	release, err := lockIdentity(store)
	if err != nil {
		return nil, err
	}
	d := &daemon{
		instance: instance,
		store:    store,
		release:  release,
		wakeup:   make(chan struct{}, 1),
		pollDone: make(chan struct{}),
		running:  map[int64]*runningTask{},
	}
	d.pollCtx, d.stopPoll = context.WithCancel(context.Background())
	d.jobsCtx, d.cancelJobs = context.WithCancel(context.Background())
	d.update(s, logger)
	go d.loop()
	return d, nil
}

func (d *daemon) settings() *settings { return d.cfg.Load() }
func (d *daemon) logger() *zap.Logger { return d.log.Load() }

// update hands the daemon a newer configuration's settings and logger.
func (d *daemon) update(s *settings, logger *zap.Logger) {
	d.cfg.Store(s)
	d.log.Store(logger)
	d.poke()
}

func (d *daemon) poke() {
	select {
	case d.wakeup <- struct{}{}:
	default:
	}
}

// loop registers, then polls until the daemon is destroyed. Nothing here
// ever makes Caddy fail: while Gitea is unreachable it logs and retries.
func (d *daemon) loop() {
	defer close(d.pollDone)
	defer func() {
		if p := recover(); p != nil {
			d.logger().Error("the runner's poller panicked; no more tasks will be taken until Caddy restarts", zap.Any("panic", p), zap.Stack("stack"))
		}
	}()
	id, err := d.ensureIdentity()
	if err != nil {
		d.setError(err)
		d.logger().Error("runner not registered; not polling", zap.Error(err))
		return
	}
	d.mu.Lock()
	d.id = id
	d.mu.Unlock()
	d.logger().Info("runner ready", zap.Int64("runner_id", id.ID), zap.String("name", id.Name), zap.String("identity", d.store.String()))
	d.poll(newGiteaClient(d.instance, id.UUID, id.Token))
}

// ensureIdentity loads the stored identity or registers a new runner,
// retrying with backoff while Gitea cannot be reached.
func (d *daemon) ensureIdentity() (*identity, error) {
	var id *identity
	err := d.retry("loading or registering the runner", func(ctx context.Context) (bool, error) {
		var err error
		id, err = d.store.load(ctx)
		if err != nil {
			return false, err
		}
		if id != nil {
			if id.Address != "" && trimSlash(id.Address) != d.instance {
				return false, fmt.Errorf("runner identity %s belongs to %s, not %s: set state_file to another file, or remove this one to register again", d.store, id.Address, d.instance)
			}
			return false, nil
		}
		id, err = d.register(ctx)
		if err != nil {
			var cerr *connect.Error
			// A refused token will not become valid by waiting.
			if isUnauthenticated(err) || (errors.As(err, &cerr) && (cerr.Code() == connect.CodePermissionDenied || cerr.Code() == connect.CodeInvalidArgument)) {
				return false, err
			}
			return true, err
		}
		return false, d.store.save(ctx, id)
	})
	return id, err
}

// register registers a new runner with Gitea.
func (d *daemon) register(ctx context.Context) (*identity, error) {
	s := d.settings()
	token := s.registration.token
	if token == "" {
		if s.registration.apiToken == "" {
			return nil, fmt.Errorf("no runner identity in %s and no registration_token or api_token to register with", d.store)
		}
		var err error
		token, err = mintRegistrationToken(ctx, d.instance, s.registration.apiToken, s.registration.scope)
		if err != nil {
			return nil, err
		}
	}
	client := newGiteaClient(d.instance, "", "")
	pctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	if _, err := client.ping.Ping(pctx, connect.NewRequest(&pingv1.PingRequest{Data: s.name})); err != nil {
		return nil, fmt.Errorf("reaching Gitea at %s: %w", d.instance, err)
	}
	resp, err := client.Register(pctx, connect.NewRequest(&runnerv1.RegisterRequest{
		Name:    s.name,
		Token:   token,
		Version: runnerVersion,
		Labels:  s.labels.names(),
	}))
	if err != nil {
		return nil, fmt.Errorf("registering runner %s with %s: %w", s.name, d.instance, err)
	}
	r := resp.Msg.Runner
	d.logger().Info("registered a new runner", zap.Int64("runner_id", r.Id), zap.String("name", r.Name))
	return &identity{
		Warning: identityWarning,
		ID:      r.Id,
		UUID:    r.Uuid,
		Name:    r.Name,
		Token:   r.Token,
		Address: d.instance,
		Labels:  s.labelSpecs,
	}, nil
}

// retry runs attempt until it succeeds, returns a final error (retry
// false), or polling stops; between attempts it waits with backoff.
func (d *daemon) retry(what string, attempt func(context.Context) (retry bool, err error)) error {
	wait := time.Second
	for {
		again, err := attempt(d.pollCtx)
		if err == nil {
			return nil
		}
		if !again {
			return err
		}
		d.setError(err)
		d.logger().Warn(what+" failed; retrying", zap.Error(err), zap.Duration("in", wait))
		if !sleep(d.pollCtx, jitter(wait)) {
			return d.pollCtx.Err()
		}
		wait = min(wait*2, time.Minute)
	}
}

// poll is the one poll loop: it takes a capacity slot before asking for a
// task, so a full runner asks for nothing.
func (d *daemon) poll(client *giteaClient) {
	var tasksVersion int64
	empties, failures := 0, 0
	for {
		if !d.waitForSlot() {
			return
		}
		s := d.settings()
		d.declareIfChanged(client, s)

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
				d.setError(err)
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
			if !d.sleepOrWake(pollWait(s, empties, failures)) {
				return
			}
			continue
		}
		pollsTotal.WithLabelValues("task").Inc()
		// Version 0 makes Gitea look in its database again: another job may
		// have become ready at the version just seen.
		tasksVersion, empties, failures = 0, 0, 0
		d.start(client, task)
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
// pickup latency is what users see.
func pollWait(s *settings, empties, failures int) time.Duration {
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

// sleepOrWake waits for d, a settings change or the end of polling.
func (d *daemon) sleepOrWake(wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-d.pollCtx.Done():
		return false
	case <-t.C:
	case <-d.wakeup:
	}
	return true
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
func (d *daemon) declareIfChanged(client *giteaClient, s *settings) {
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

// start runs a task in its own goroutine, holding a capacity slot.
func (d *daemon) start(client *giteaClient, task *runnerv1.Task) {
	fields := task.Context.GetFields()
	d.mu.Lock()
	if _, dup := d.running[task.Id]; dup {
		d.mu.Unlock()
		d.logger().Warn("task is already running; ignoring it", zap.Int64("task", task.Id))
		return
	}
	d.running[task.Id] = &runningTask{
		ID:         task.Id,
		Repository: fields["repository"].GetStringValue(),
		Job:        fields["job"].GetStringValue(),
		Started:    time.Now(),
	}
	d.mu.Unlock()
	tasksRunning.Inc()
	d.tasks.Add(1)
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.running, task.Id)
			d.mu.Unlock()
			tasksRunning.Dec()
			d.tasks.Done()
			d.poke()
		}()
		d.runTask(d.jobsCtx, client, task)
	}()
}

func (d *daemon) setError(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastErr = err.Error()
}

func (d *daemon) markPolled() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastPoll = time.Now()
}

func (d *daemon) currentIdentity() *identity {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.id
}

// shutdown stops taking tasks, lets running ones finish for up to the
// shutdown timeout, then cancels them and waits (bounded) for their final
// reports. It is the caddy.Destructor of the pooled daemon.
func (d *daemon) shutdown() {
	d.stopPoll()
	<-d.pollDone
	finished := make(chan struct{})
	go func() {
		d.tasks.Wait()
		close(finished)
	}()
	grace := d.settings().shutdown
	if grace > 0 {
		d.mu.Lock()
		n := len(d.running)
		d.mu.Unlock()
		if n > 0 {
			d.logger().Info("waiting for running tasks to finish", zap.Int("tasks", n), zap.Duration("shutdown_timeout", grace))
		}
	}
	select {
	case <-finished:
	case <-time.After(grace):
		d.cancelJobs()
		select {
		case <-finished:
		case <-time.After(time.Minute):
			d.logger().Error("tasks did not end within a minute of being cancelled")
		}
	}
	d.cancelJobs()
	d.release()
}

// Destruct ends the daemon when the last configuration using it stops.
func (d *daemon) Destruct() error {
	d.shutdown()
	return nil
}
