package caddyrunner

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"go.uber.org/zap"
)

// runnerVersion is sent to Gitea at registration and with every Declare.
const runnerVersion = "cargoxx-runner"

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
	// agentPath is where container jobs' auto-push agent is installed.
	agentPath    string
	nixCache     string
	actionsCache string
	// keepRuns is how many successful default-branch runs per repository
	// the cache keeps.
	keepRuns     int
	autoPush     string // autoPushOn, autoPushOff or autoPushRequired
	registration registration
	webhook      *webhookSettings // nil: polling alone finds jobs
	// subscriptionRecord is the file recording the webhook the runner made
	// in Gitea.
	subscriptionRecord string
	ephemeral          bool
	exitWhenDone       bool
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
	// notified says a webhook told of a queued job since the last poll.
	notified chan struct{}
	// resubscribe says the settings changed since the webhook in Gitea
	// was last made to agree with them.
	resubscribe chan struct{}
	// background holds the goroutines other than polling and jobs.
	background sync.WaitGroup

	pollCtx    context.Context // ends polling
	stopPoll   context.CancelFunc
	jobsCtx    context.Context // ends running jobs
	cancelJobs context.CancelFunc
	pollDone   chan struct{}
	tasks      sync.WaitGroup
	// run runs one task to its end: runTask, or a test's stand-in.
	run func(context.Context, runnerv1connect.RunnerServiceClient, *runnerv1.Task)

	// watchNotice logs once how container jobs are pushed.
	watchNotice sync.Once

	mu       sync.Mutex
	id       *identity
	declared []string
	running  map[int64]*JobStatus
	// finished are the last finishedKept tasks that ended, oldest first.
	finished []JobStatus
	draining bool
	lastPoll time.Time
	// failures counts the polls that failed in a row, and retryAt is
	// when the next one is made.
	failures int
	retryAt  time.Time
	// stopped says why the runner stopped polling for good, if it did.
	stopped string
	hookID  int64  // the webhook the runner keeps in Gitea
	hookErr string // why it could not
	lastErr string
	// lastWebhook is when a webhook last woke the poller.
	lastWebhook time.Time
	// fetchedBy counts the tasks taken, by what made the runner ask.
	fetchedBy map[string]int
}

// newDaemon takes the identity's lock and starts the daemon.
func newDaemon(instance string, store identityStore, s *settings, logger *zap.Logger) (*daemon, error) {
	release, err := lockIdentity(store)
	if err != nil {
		return nil, err
	}
	d := makeDaemon(instance, store, s, logger)
	d.release = release
	go d.loop()
	d.background.Add(1)
	go func() {
		defer d.background.Done()
		d.subscribe()
	}()
	return d, nil
}

// makeDaemon builds a daemon that holds no lock and does not poll yet.
func makeDaemon(instance string, store identityStore, s *settings, logger *zap.Logger) *daemon {
	d := &daemon{
		instance:    instance,
		store:       store,
		release:     func() {},
		wakeup:      make(chan struct{}, 1),
		notified:    make(chan struct{}, 1),
		resubscribe: make(chan struct{}, 1),
		fetchedBy:   map[string]int{},
		pollDone:    make(chan struct{}),
		running:     map[int64]*JobStatus{},
	}
	d.run = d.runTask
	d.pollCtx, d.stopPoll = context.WithCancel(context.Background())
	d.jobsCtx, d.cancelJobs = context.WithCancel(context.Background())
	d.cfg.Store(s)
	d.log.Store(logger)
	return d
}

func (d *daemon) settings() *settings { return d.cfg.Load() }
func (d *daemon) logger() *zap.Logger { return d.log.Load() }

// update hands the daemon a newer configuration's settings and logger.
func (d *daemon) update(s *settings, logger *zap.Logger) {
	d.cfg.Store(s)
	d.log.Store(logger)
	d.poke()
	select {
	case d.resubscribe <- struct{}{}:
	default:
	}
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
		d.setStopped(err)
		d.logger().Error("runner not registered; not polling", zap.Error(err))
		return
	}
	d.mu.Lock()
	d.id = id
	d.mu.Unlock()
	d.logger().Info("runner ready", zap.Int64("runner_id", id.ID), zap.String("name", id.Name), zap.String("identity", d.store.String()))
	d.poll(newGiteaClient(d.instance, id.UUID, id.Token))
}

// start runs a task in its own goroutine, holding a capacity slot.
func (d *daemon) start(client runnerv1connect.RunnerServiceClient, task *runnerv1.Task) {
	d.mu.Lock()
	if _, dup := d.running[task.Id]; dup {
		d.mu.Unlock()
		d.logger().Warn("task is already running; ignoring it", zap.Int64("task", task.Id))
		return
	}
	d.running[task.Id] = jobStatusOf(task, d.instance, time.Now())
	d.mu.Unlock()
	tasksRunning.Inc()
	d.tasks.Add(1)
	go func() {
		defer func() {
			d.finish(task.Id, time.Now())
			tasksRunning.Dec()
			d.tasks.Done()
			d.poke()
		}()
		d.run(d.jobsCtx, client, task)
		if id := d.currentIdentity(); id != nil && id.Ephemeral {
			d.ephemeralDone()
		}
	}()
}

// setDraining stops or resumes taking new tasks; running ones go on.
func (d *daemon) setDraining(draining bool) {
	d.mu.Lock()
	d.draining = draining
	d.mu.Unlock()
	d.poke()
	verb := "resumed"
	if draining {
		verb = "draining"
	}
	d.logger().Info("runner "+verb+" through the admin API", zap.String("name", d.settings().name))
}

func (d *daemon) setError(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastErr = err.Error()
}

// setStopped records why the runner stopped polling for good.
func (d *daemon) setStopped(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastErr, d.stopped = err.Error(), err.Error()
}

// backOff records that the last failures polls failed and the next is
// made after wait.
func (d *daemon) backOff(failures int, wait time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures, d.retryAt = failures, time.Now().Add(wait)
}

func (d *daemon) markPolled() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures, d.retryAt = 0, time.Time{}
	d.lastPoll = time.Now()
	lastPoll.Set(float64(d.lastPoll.UnixNano()) / 1e9)
}

// notify tells the poller that Gitea has queued a job it can run. Any
// number of notifications before the next poll make one poll.
func (d *daemon) notify() {
	d.mu.Lock()
	d.lastWebhook = time.Now()
	lastWebhook.Set(float64(d.lastWebhook.UnixNano()) / 1e9)
	d.mu.Unlock()
	select {
	case d.notified <- struct{}{}:
	default:
	}
}

// countFetched records a task taken after a poll made for trigger.
func (d *daemon) countFetched(trigger string) {
	tasksFetched.WithLabelValues(trigger).Inc()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fetchedBy[trigger]++
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
	d.background.Wait()
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
