package caddyrunner

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"go.uber.org/zap"
)

// TestEphemeralRunnerTakesOneJob: an ephemeral runner runs the one task
// Gitea hands it, asks for no other, and forgets the identity Gitea
// deletes with the task.
func TestEphemeralRunnerTakesOneJob(t *testing.T) {
	fake := newFakeTaskService(
		fetchAnswer{version: 1, task: &runnerv1.Task{Id: 1}},
		fetchAnswer{version: 2, task: &runnerv1.Task{Id: 2}},
	)
	labels, err := parseLabels([]string{"linux:host"})
	if err != nil {
		t.Fatal(err)
	}
	s := &settings{name: "unit", labelSpecs: []string{"linux:host"}, labels: labels, capacity: 2,
		fetchInterval: time.Millisecond, shutdown: time.Second, ephemeral: true}
	store := fileIdentityStore{path: filepath.Join(t.TempDir(), ".runner")}
	id := &identity{ID: 7, UUID: "u", Token: "t", Name: "unit", Ephemeral: true}
	if err := store.save(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	d := makeDaemon("http://gitea.invalid", store, s, zap.NewNop())
	d.id = id
	ran := make(chan int64, 2)
	d.run = func(_ context.Context, _ runnerv1connect.RunnerServiceClient, task *runnerv1.Task) { ran <- task.Id }
	go func() {
		defer close(d.pollDone)
		d.poll(fake)
	}()
	t.Cleanup(d.shutdown)

	select {
	case <-d.pollDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the ephemeral runner went on polling after its job")
	}
	d.tasks.Wait()
	if got := len(ran); got != 1 || <-ran != 1 {
		t.Fatalf("the ephemeral runner ran %d tasks, want only task 1", got)
	}
	if asked, _ := fake.calls(); len(asked) != 1 {
		t.Fatalf("the ephemeral runner asked Gitea for tasks %d times, want 1", len(asked))
	}
	if _, err := os.Stat(store.path); !os.IsNotExist(err) {
		t.Fatalf("the ephemeral runner's identity is still stored after its job (%v)", err)
	}
}
