package caddyrunner

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// fakeRunnerService keeps log rows and task states as Gitea does
// (models/actions UpdateLog and UpdateTask), and can fail, lag its
// acknowledgements or cancel the task.
type fakeRunnerService struct {
	runnerv1connect.RunnerServiceClient // the methods tests do not use

	mu        sync.Mutex
	rows      []string
	noMore    bool
	states    []*runnerv1.TaskState
	outputs   map[string]string
	failLogs  int // fail this many UpdateLog calls first
	failState int // fail this many UpdateTask calls first
	ackLag    int // acknowledge this many rows fewer, once
	cancelled bool
}

func (f *fakeRunnerService) UpdateLog(_ context.Context, req *connect.Request[runnerv1.UpdateLogRequest]) (*connect.Response[runnerv1.UpdateLogResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failLogs > 0 {
		f.failLogs--
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("gitea is restarting"))
	}
	ack := int64(len(f.rows))
	index, rows := req.Msg.Index, req.Msg.Rows
	// Gitea's rule: rows before what it holds are skipped, a gap is not
	// filled, and the answer is how many rows it holds.
	if index <= ack && index+int64(len(rows)) > ack {
		for _, row := range rows[ack-index:] {
			f.rows = append(f.rows, row.Content)
		}
	}
	if req.Msg.NoMore && index <= ack {
		f.noMore = true
	}
	reported := int64(len(f.rows))
	if f.ackLag > 0 {
		reported -= int64(min(f.ackLag, len(f.rows)))
		f.ackLag = 0
	}
	return connect.NewResponse(&runnerv1.UpdateLogResponse{AckIndex: reported}), nil
}

func (f *fakeRunnerService) UpdateTask(_ context.Context, req *connect.Request[runnerv1.UpdateTaskRequest]) (*connect.Response[runnerv1.UpdateTaskResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failState > 0 {
		f.failState--
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("gitea is restarting"))
	}
	f.states = append(f.states, proto.Clone(req.Msg.State).(*runnerv1.TaskState))
	if f.outputs == nil {
		f.outputs = map[string]string{}
	}
	var sent []string
	for k, v := range req.Msg.Outputs {
		f.outputs[k] = v
		sent = append(sent, k)
	}
	resp := &runnerv1.UpdateTaskResponse{SentOutputs: sent}
	if f.cancelled {
		resp.State = &runnerv1.TaskState{Id: req.Msg.State.Id, Result: runnerv1.Result_RESULT_CANCELLED}
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeRunnerService) log() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.rows, "\n")
}

func (f *fakeRunnerService) lastState() *runnerv1.TaskState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.states[len(f.states)-1]
}

// newTestReporter is a reporter for a task with secrets and a token,
// talking to a fake Gitea, and running.
func newTestReporter(t *testing.T, steps int) (*reporter, *fakeRunnerService, context.Context) {
	t.Helper()
	fields, err := structpb.NewStruct(map[string]any{"token": "task-token-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	task := &runnerv1.Task{Id: 7, Context: fields, Secrets: map[string]string{"DEPLOY_KEY": "hunter2-secret-value"}}
	fake := new(fakeRunnerService)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rep := newReporter(ctx, cancel, fake, task, zap.NewNop())
	rep.resetSteps(steps)
	go rep.run()
	return rep, fake, ctx
}

// stepLine is a line a step prints.
func stepLine(step int, msg string) *logrus.Entry {
	return &logrus.Entry{Time: time.Now(), Level: logrus.InfoLevel, Message: msg,
		Data: logrus.Fields{"stage": "Main", "stepNumber": step, "raw_output": true}}
}

// stepEnd is act's entry for a step's result.
func stepEnd(step int, result string) *logrus.Entry {
	return &logrus.Entry{Time: time.Now(), Level: logrus.InfoLevel, Message: "step ended",
		Data: logrus.Fields{"stage": "Main", "stepNumber": step, "stepResult": result}}
}

// jobEnd is act's entry for the job's result.
func jobEnd(result string) *logrus.Entry {
	return &logrus.Entry{Time: time.Now(), Level: logrus.InfoLevel, Message: "job ended",
		Data: logrus.Fields{"stage": "Post", "jobResult": result}}
}

func fire(t *testing.T, rep *reporter, entries ...*logrus.Entry) {
	t.Helper()
	for _, e := range entries {
		if err := rep.Fire(e); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReporterMasksSecretsTheTaskTokenAndAddedMasks(t *testing.T) {
	rep, fake, _ := newTestReporter(t, 1)
	rep.addMask("runner-credential-value")
	fire(t, rep,
		stepLine(0, "the secret is hunter2-secret-value"),
		stepLine(0, "the token is task-token-0123456789"),
		stepLine(0, "the credential is runner-credential-value"),
		stepLine(0, "::add-mask::added-at-runtime"),
		stepLine(0, "later: added-at-runtime"),
		stepEnd(0, "success"),
		jobEnd("success"),
	)
	if err := rep.close(""); err != nil {
		t.Fatal(err)
	}
	log := fake.log()
	for _, secret := range []string{"hunter2-secret-value", "task-token-0123456789", "runner-credential-value", "added-at-runtime"} {
		if strings.Contains(log, secret) {
			t.Errorf("the log shows %q:\n%s", secret, log)
		}
	}
	if !strings.Contains(log, "the secret is ***") || !strings.Contains(log, "later: ***") {
		t.Errorf("masked lines are missing:\n%s", log)
	}
	if strings.Contains(log, "::add-mask::") {
		t.Errorf("the add-mask command was printed:\n%s", log)
	}
}

func TestReporterStopCommands(t *testing.T) {
	rep, fake, _ := newTestReporter(t, 1)
	fire(t, rep,
		stepLine(0, "::stop-commands::pause-token"),
		stepLine(0, "::add-mask::not-a-mask-while-stopped"),
		stepLine(0, "::pause-token::"),
		stepLine(0, "::add-mask::masked-again"),
		stepLine(0, "masked-again and not-a-mask-while-stopped"),
		stepEnd(0, "success"),
		jobEnd("success"),
	)
	if err := rep.close(""); err != nil {
		t.Fatal(err)
	}
	log := fake.log()
	if !strings.Contains(log, "::add-mask::not-a-mask-while-stopped") {
		t.Errorf("a command while commands are stopped should be printed as is:\n%s", log)
	}
	if !strings.Contains(log, "*** and not-a-mask-while-stopped") {
		t.Errorf("after ::pause-token:: commands should work again:\n%s", log)
	}
	if strings.Contains(log, "stop-commands") || strings.Contains(log, "::pause-token::") {
		t.Errorf("the stop and resume commands were printed:\n%s", log)
	}
}

func TestReporterStepLogIndexes(t *testing.T) {
	rep, fake, _ := newTestReporter(t, 2)
	rep.logf("setting up the job")
	fire(t, rep,
		stepLine(0, "first step, line 1"),
		stepLine(0, "first step, line 2"),
		stepEnd(0, "success"),
		stepLine(1, "second step"),
		stepEnd(1, "failure"),
		jobEnd("failure"),
	)
	if err := rep.close(""); err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(fake.log(), "\n")
	state := fake.lastState()
	if state.Result != runnerv1.Result_RESULT_FAILURE {
		t.Errorf("final result %v, want failure", state.Result)
	}
	for i, want := range []struct {
		result runnerv1.Result
		first  string
		length int64
	}{
		{runnerv1.Result_RESULT_SUCCESS, "first step, line 1", 2},
		{runnerv1.Result_RESULT_FAILURE, "second step", 1},
	} {
		step := state.Steps[i]
		if step.Result != want.result || step.LogLength != want.length || int(step.LogIndex) >= len(rows) || rows[step.LogIndex] != want.first {
			t.Errorf("step %d: result %v, rows %d from %d (%q); want %v, %d rows from %q",
				i, step.Result, step.LogLength, step.LogIndex, rows[min(int(step.LogIndex), len(rows)-1)], want.result, want.length, want.first)
		}
	}
}

// TestReporterResendsWhatGiteaDidNotAcknowledge has Gitea acknowledge fewer
// rows than it stored: the reporter sends them again, and Gitea's log
// holds every row once, in order.
func TestReporterResendsWhatGiteaDidNotAcknowledge(t *testing.T) {
	rep, fake, ctx := newTestReporter(t, 1)
	fake.ackLag = 2
	fire(t, rep, stepLine(0, "row 1"), stepLine(0, "row 2"), stepLine(0, "row 3"))
	if err := rep.sendLog(ctx, false); err != nil {
		t.Fatal(err)
	}
	fire(t, rep, stepLine(0, "row 4"), stepEnd(0, "success"), jobEnd("success"))
	if err := rep.close(""); err != nil {
		t.Fatal(err)
	}
	// The job's end is logged after its steps, in the "Complete job" part.
	if got := fake.log(); got != "row 1\nrow 2\nrow 3\nrow 4\njob ended" {
		t.Fatalf("Gitea's log should hold every row once, in order:\n%s", got)
	}
	if !fake.noMore {
		t.Fatal("the log was never closed with no_more")
	}
}

// TestReporterRetriesTheFinalReport has Gitea fail the first final log
// and state requests: close retries until both are through.
func TestReporterRetriesTheFinalReport(t *testing.T) {
	rep, fake, _ := newTestReporter(t, 1)
	fire(t, rep, stepLine(0, "done"), stepEnd(0, "success"), jobEnd("success"))
	fake.mu.Lock()
	fake.failLogs, fake.failState = 2, 2
	fake.mu.Unlock()
	if err := rep.close(""); err != nil {
		t.Fatalf("close: %v", err)
	}
	if !fake.noMore || fake.lastState().Result != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("final report: no_more %v, result %v", fake.noMore, fake.lastState().Result)
	}
	if !strings.Contains(fake.log(), "done") {
		t.Fatalf("the log lost its rows:\n%s", fake.log())
	}
}

// TestReporterFailsAJobWithoutResult closes a job that never reported a
// result, as when the runner gives up on it: the job fails, its unfinished
// steps are cancelled, and the reason is the last line of its log.
func TestReporterFailsAJobWithoutResult(t *testing.T) {
	rep, fake, _ := newTestReporter(t, 2)
	fire(t, rep, stepLine(0, "working"))
	if err := rep.close("the job ran longer than the runner's timeout"); err != nil {
		t.Fatal(err)
	}
	state := fake.lastState()
	if state.Result != runnerv1.Result_RESULT_FAILURE || state.Steps[0].Result != runnerv1.Result_RESULT_CANCELLED || state.Steps[1].Result != runnerv1.Result_RESULT_CANCELLED {
		t.Fatalf("final state: %v", state)
	}
	if !strings.HasSuffix(fake.log(), "the job ran longer than the runner's timeout") {
		t.Fatalf("the reason is not the log's last line:\n%s", fake.log())
	}
}

// TestReporterCancelledInGitea has Gitea answer a state update with a
// result, as when a user cancels the run: the job's context ends.
func TestReporterCancelledInGitea(t *testing.T) {
	rep, fake, ctx := newTestReporter(t, 1)
	fake.mu.Lock()
	fake.cancelled = true
	fake.mu.Unlock()
	fire(t, rep, stepLine(0, "running"))
	if err := rep.sendState(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the task's context did not end when Gitea cancelled it")
	}
	fake.mu.Lock()
	sent := fake.states[0]
	fake.mu.Unlock()
	if sent.Result != runnerv1.Result_RESULT_UNSPECIFIED {
		t.Fatalf("a state before the end carried a result: %v", sent.Result)
	}
}

func TestReporterOutputs(t *testing.T) {
	rep, fake, _ := newTestReporter(t, 1)
	long := strings.Repeat("k", maxOutputKey+1)
	rep.setOutputs(map[string]string{"greeting": "hello", long: "dropped"})
	fire(t, rep, stepEnd(0, "success"), jobEnd("success"))
	if err := rep.close(""); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.outputs["greeting"] != "hello" || len(fake.outputs) != 1 {
		t.Fatalf("outputs sent: %v", fake.outputs)
	}
	if !strings.Contains(strings.Join(fake.rows, "\n"), "ignoring output") {
		t.Fatalf("the dropped output is not explained in the log:\n%s", strings.Join(fake.rows, "\n"))
	}
}
