package caddyrunner

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"go.uber.org/zap"
)

// fetchAnswer is one scripted answer of fakeTaskService.FetchTask.
type fetchAnswer struct {
	version int64
	task    *runnerv1.Task
	err     error
}

// fakeTaskService answers FetchTask from a script, records what each call
// asked, and records Declare calls.
type fakeTaskService struct {
	runnerv1connect.RunnerServiceClient

	mu       sync.Mutex
	script   []fetchAnswer
	asked    []int64 // TasksVersion of each FetchTask call
	declared [][]string
	fetched  chan struct{}
	// delay is how long each FetchTask takes.
	delay                  time.Duration
	inFlight, mostInFlight atomic.Int64
}

func newFakeTaskService(script ...fetchAnswer) *fakeTaskService {
	return &fakeTaskService{script: script, fetched: make(chan struct{}, 100)}
}

func (f *fakeTaskService) FetchTask(_ context.Context, req *connect.Request[runnerv1.FetchTaskRequest]) (*connect.Response[runnerv1.FetchTaskResponse], error) {
	now := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for most := f.mostInFlight.Load(); now > most && !f.mostInFlight.CompareAndSwap(most, now); most = f.mostInFlight.Load() {
	}
	time.Sleep(f.delay)
	f.mu.Lock()
	defer func() {
		f.mu.Unlock()
		f.fetched <- struct{}{}
	}()
	f.asked = append(f.asked, req.Msg.TasksVersion)
	if len(f.script) == 0 {
		return connect.NewResponse(&runnerv1.FetchTaskResponse{}), nil
	}
	next := f.script[0]
	f.script = f.script[1:]
	if next.err != nil {
		return nil, next.err
	}
	return connect.NewResponse(&runnerv1.FetchTaskResponse{TasksVersion: next.version, Task: next.task}), nil
}

func (f *fakeTaskService) Declare(_ context.Context, req *connect.Request[runnerv1.DeclareRequest]) (*connect.Response[runnerv1.DeclareResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.declared = append(f.declared, req.Msg.Labels)
	return connect.NewResponse(&runnerv1.DeclareResponse{}), nil
}

func (f *fakeTaskService) calls() ([]int64, [][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked), slices.Clone(f.declared)
}

// waitFetches waits until FetchTask has been called n times in all.
func (f *fakeTaskService) waitFetches(t *testing.T, n int) {
	t.Helper()
	for {
		if asked, _ := f.calls(); len(asked) >= n {
			return
		}
		select {
		case <-f.fetched:
		case <-time.After(5 * time.Second):
			asked, _ := f.calls()
			t.Fatalf("FetchTask was called %d times, want %d", len(asked), n)
		}
	}
}

// testDaemon is a daemon polling fake with a 1 ms interval, whose tasks
// run task instead of a job; it stops when the test ends.
func testDaemon(t *testing.T, fake *fakeTaskService, capacity int, task func(*runnerv1.Task)) *daemon {
	t.Helper()
	return testDaemonWith(t, fake, capacity, task, func(*settings) {})
}

// testDaemonWith is testDaemon with its settings changed by tweak before
// the daemon starts.
func testDaemonWith(t *testing.T, fake *fakeTaskService, capacity int, task func(*runnerv1.Task), tweak func(*settings)) *daemon {
	t.Helper()
	labels, err := parseLabels([]string{"linux:host"})
	if err != nil {
		t.Fatal(err)
	}
	s := &settings{name: "unit", labelSpecs: []string{"linux:host"}, labels: labels, capacity: capacity,
		fetchInterval: time.Millisecond, shutdown: time.Second}
	tweak(s)
	d := makeDaemon("http://gitea.invalid", fileIdentityStore{path: t.TempDir() + "/.runner"}, s, zap.NewNop())
	d.run = func(_ context.Context, _ runnerv1connect.RunnerServiceClient, t *runnerv1.Task) { task(t) }
	go func() {
		defer close(d.pollDone)
		d.poll(fake)
	}()
	t.Cleanup(d.shutdown)
	return d
}

func TestPollTasksVersion(t *testing.T) {
	ran := make(chan int64, 10)
	fake := newFakeTaskService(
		fetchAnswer{version: 7},
		fetchAnswer{version: 7, task: &runnerv1.Task{Id: 1}},
		fetchAnswer{version: 9},
	)
	testDaemon(t, fake, 1, func(task *runnerv1.Task) { ran <- task.Id })
	fake.waitFetches(t, 4)
	asked, declared := fake.calls()
	// The version Gitea last answered is sent back; after a task, 0 makes
	// Gitea look in its database again.
	if want := []int64{0, 7, 0, 9}; !slices.Equal(asked[:4], want) {
		t.Fatalf("FetchTask asked with tasks_version %v, want %v", asked[:4], want)
	}
	if id := <-ran; id != 1 {
		t.Fatalf("ran task %d, want 1", id)
	}
	if len(declared) != 1 || !slices.Equal(declared[0], []string{"linux"}) {
		t.Fatalf("Declare calls %v, want one with [linux]", declared)
	}
}

func TestPollAsksNothingWhileDrainedOrFull(t *testing.T) {
	release := make(chan struct{})
	fake := newFakeTaskService(fetchAnswer{task: &runnerv1.Task{Id: 1}})
	d := testDaemon(t, fake, 1, func(*runnerv1.Task) { <-release })
	fake.waitFetches(t, 1)
	// The one slot is taken: no more polls while the task runs.
	time.Sleep(50 * time.Millisecond)
	if asked, _ := fake.calls(); len(asked) != 1 {
		t.Fatalf("a full runner polled %d times", len(asked))
	}
	d.setDraining(true)
	close(release)
	time.Sleep(50 * time.Millisecond)
	if asked, _ := fake.calls(); len(asked) != 1 {
		t.Fatalf("a drained runner polled %d times", len(asked))
	}
	if st := d.status(); !st.Draining || len(st.Running) != 0 {
		t.Fatalf("status %+v, want draining with nothing running", st)
	}
	d.setDraining(false)
	fake.waitFetches(t, 2)
}

func TestPollStopsWhenGiteaForgetsTheRunner(t *testing.T) {
	fake := newFakeTaskService(fetchAnswer{err: connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner"))})
	d := testDaemon(t, fake, 1, func(*runnerv1.Task) {})
	select {
	case <-d.pollDone:
	case <-time.After(5 * time.Second):
		t.Fatal("polling went on after Gitea refused the runner")
	}
	if st := d.status(); st.LastError == "" {
		t.Fatal("the status does not say why polling stopped")
	}
}

func TestPollRetriesFailuresAndDeclaresNewLabels(t *testing.T) {
	fake := newFakeTaskService(
		fetchAnswer{err: connect.NewError(connect.CodeUnavailable, errors.New("gitea is restarting"))},
		fetchAnswer{version: 3},
	)
	d := testDaemon(t, fake, 1, func(*runnerv1.Task) {})
	fake.waitFetches(t, 3)
	if asked, _ := fake.calls(); !slices.Equal(asked[:3], []int64{0, 0, 3}) {
		t.Fatalf("FetchTask asked with %v after a failure, want [0 0 3]", asked[:3])
	}
	labels, _ := parseLabels([]string{"linux:host", "nix:host"})
	s := *d.settings()
	s.labelSpecs, s.labels = []string{"linux:host", "nix:host"}, labels
	d.update(&s, zap.NewNop())
	asked, _ := fake.calls()
	fake.waitFetches(t, len(asked)+2)
	_, declared := fake.calls()
	if len(declared) != 2 || !slices.Equal(declared[1], []string{"linux", "nix"}) {
		t.Fatalf("Declare calls %v, want the new labels declared once", declared)
	}
}
