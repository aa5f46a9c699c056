package caddyrunner

import (
	"errors"
	"fmt"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"
)

// statusTask is a task with the context fields the status shows.
func statusTask(t *testing.T, id int64) *runnerv1.Task {
	t.Helper()
	fields, err := structpb.NewStruct(map[string]any{
		"repository": "pkgs/main", "workflow": "ci", "job": "build", "ref": "refs/heads/main",
		"event_name": "push", "run_id": fmt.Sprint(100 + id),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &runnerv1.Task{Id: id, Context: fields}
}

// waitState waits until the daemon's status is in state.
func waitState(t *testing.T, d *daemon, state string) RunnerStatus {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := d.status()
		if st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("the runner stays %q (%s), want %q", st.State, st.Error, state)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestStatusFollowsTheRunnersStates(t *testing.T) {
	fake := newFakeTaskService(fetchAnswer{version: 1, task: statusTask(t, 1)})
	release := make(chan struct{})
	d := testDaemon(t, fake, 1, func(*runnerv1.Task) { <-release })

	st := waitState(t, d, StateRunning)
	if len(st.Running) != 1 {
		t.Fatalf("running: %+v", st.Running)
	}
	job := st.Running[0]
	if job.Repository != "pkgs/main" || job.Workflow != "ci" || job.Job != "build" || job.Ref != "refs/heads/main" ||
		job.RunURL != "http://gitea.invalid/pkgs/main/actions/runs/101" || job.Started.IsZero() || job.Finished != nil {
		t.Fatalf("the running job reads %+v", job)
	}
	d.setDraining(true)
	waitState(t, d, StateDraining)
	d.recordResult(1, "success")
	close(release)
	st = waitState(t, d, StateDrained)
	if len(st.Running) != 0 || len(st.Finished) != 1 || st.Finished[0].Result != "success" || st.Finished[0].Finished == nil {
		t.Fatalf("after the job: running %+v, finished %+v", st.Running, st.Finished)
	}
	d.setDraining(false)
	waitState(t, d, StateIdle)
}

func TestStatusShowsBackingOffAndStopped(t *testing.T) {
	unavailable := connect.NewError(connect.CodeUnavailable, errors.New("gitea is down"))
	var script []fetchAnswer
	for range 3 {
		script = append(script, fetchAnswer{err: unavailable})
	}
	fake := newFakeTaskService(script...)
	d := testDaemonWith(t, fake, 1, func(*runnerv1.Task) {}, func(s *settings) { s.fetchInterval = 200 * time.Millisecond })
	st := waitState(t, d, StateBackingOff)
	if st.Failures == 0 || st.RetryAt == nil || st.Error == "" {
		t.Fatalf("backing off without saying why or until when: %+v", st)
	}
	waitState(t, d, StateIdle) // the fake answers again

	gone := newFakeTaskService(fetchAnswer{err: connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner"))})
	st = waitState(t, testDaemon(t, gone, 1, func(*runnerv1.Task) {}), StateStopped)
	if st.Error == "" {
		t.Fatal("stopped without saying why")
	}
}

func TestStatusKeepsTheLastFinishedJobs(t *testing.T) {
	d := makeDaemon("http://gitea.invalid", fileIdentityStore{path: t.TempDir() + "/.runner"}, &settings{name: "unit"}, nil)
	for id := int64(1); id <= finishedKept+5; id++ {
		d.running[id] = jobStatusOf(statusTask(t, id), d.instance, time.Now())
		d.finish(id, time.Now())
	}
	st := d.status()
	if len(st.Finished) != finishedKept || st.Finished[0].ID != finishedKept+5 || st.Finished[finishedKept-1].ID != 6 {
		t.Fatalf("finished: %d jobs, newest %d, oldest %d", len(st.Finished), st.Finished[0].ID, st.Finished[len(st.Finished)-1].ID)
	}
	if st.Finished[0].Result != "unknown" {
		t.Fatalf("a job that reported no result reads %q", st.Finished[0].Result)
	}
}
