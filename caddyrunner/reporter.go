package caddyrunner

// The reporting rules follow Gitea's own runner (gitea.com/gitea/runner,
// internal/pkg/report, MIT licensed): see the Gitea runner protocol notes.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"gitea.com/gitea/runner/act/runner"
	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// logInterval is how often buffered log rows are sent.
	logInterval = time.Second
	// logBatchSize rows are sent at once, without waiting for logInterval.
	logBatchSize = 100
	// stateInterval is the heartbeat: the state is sent at least this often,
	// even when nothing changed, so Gitea never takes a silent job for a
	// zombie (its reaper acts after 10 minutes without updates).
	stateInterval = 3 * time.Second
	// closeTimeout bounds each attempt of the final report.
	closeTimeout = 10 * time.Second
	// Gitea keeps an output only within these limits.
	maxOutputKey   = 255
	maxOutputValue = 1 << 20
)

// reporter streams a task's log and state to Gitea. act calls Fire for
// every log entry of the job; a goroutine sends batches of rows and the
// state, and close sends what is left on a context of its own, so that the
// final report survives the job's cancellation.
type reporter struct {
	ctx    context.Context // the task's context
	cancel context.CancelFunc
	client runnerv1connect.RunnerServiceClient
	logger *zap.Logger

	rpcMu sync.Mutex // one RPC at a time, so acknowledgements stay in order

	mu           sync.Mutex
	state        *runnerv1.TaskState
	stateChanged bool
	logOffset    int // rows Gitea has acknowledged
	rows         []*runnerv1.LogRow
	masks        []string
	masker       *strings.Replacer
	outputs      map[string]string
	sentOutputs  map[string]bool
	debug        bool
	stopToken    string // set by ::stop-commands::
	closed       bool

	wake chan struct{}
	done chan struct{}
}

func newReporter(ctx context.Context, cancel context.CancelFunc, client runnerv1connect.RunnerServiceClient, task *runnerv1.Task, logger *zap.Logger) *reporter {
	r := &reporter{
		ctx:         ctx,
		cancel:      cancel,
		client:      client,
		logger:      logger,
		state:       &runnerv1.TaskState{Id: task.Id},
		outputs:     map[string]string{},
		sentOutputs: map[string]bool{},
		debug:       task.Secrets["ACTIONS_STEP_DEBUG"] == "true",
		wake:        make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	for _, key := range []string{"token", "gitea_runtime_token"} {
		if v := task.Context.GetFields()[key].GetStringValue(); v != "" {
			r.masks = runner.AppendSecretMasker(r.masks, v)
		}
	}
	for _, v := range task.Secrets {
		r.masks = runner.AppendSecretMasker(r.masks, v)
	}
	r.masker = strings.NewReplacer(r.masks...)
	return r
}

// resetSteps sizes the step list to the job's steps.
func (r *reporter) resetSteps(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state.Steps = make([]*runnerv1.StepState, n)
	for i := range r.state.Steps {
		r.state.Steps[i] = &runnerv1.StepState{Id: int64(i)}
	}
}

// Levels makes the reporter a logrus hook for every level.
func (r *reporter) Levels() []logrus.Level { return logrus.AllLevels }

// Fire takes one log entry of the job.
func (r *reporter) Fire(entry *logrus.Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	urgent := r.fire(entry)
	r.stateChanged = true
	r.notify(urgent)
	return nil
}

// fire records an entry and reports whether the state changed in a way the
// user watches (a step started or ended, the job ended).
func (r *reporter) fire(entry *logrus.Entry) bool {
	if r.state.StartedAt == nil {
		r.state.StartedAt = timestamppb.New(entry.Time)
	}
	if entry.Data["stage"] != "Main" {
		urgent := false
		if result, ok := parseResult(entry.Data["jobResult"]); ok {
			r.state.Result = result
			r.state.StoppedAt = timestamppb.New(entry.Time)
			for _, s := range r.state.Steps {
				if s.Result == runnerv1.Result_RESULT_UNSPECIFIED {
					s.Result = runnerv1.Result_RESULT_CANCELLED
					if result == runnerv1.Result_RESULT_SKIPPED {
						s.Result = runnerv1.Result_RESULT_SKIPPED
					}
				}
			}
			urgent = true
		}
		r.appendOutsideSteps(entry)
		return urgent
	}
	var step *runnerv1.StepState
	if n, ok := entry.Data["stepNumber"].(int); ok && n >= 0 && n < len(r.state.Steps) {
		step = r.state.Steps[n]
	}
	if step == nil {
		r.appendOutsideSteps(entry)
		return false
	}
	urgent := false
	if step.StartedAt == nil {
		step.StartedAt = timestamppb.New(entry.Time)
		urgent = true
	}
	if entry.Level == logrus.ErrorLevel {
		entry.Data["raw_output"] = true // errors are never hidden
	}
	if raw, _ := entry.Data["raw_output"].(bool); raw {
		if row := r.logRow(entry); row != nil {
			if step.LogLength == 0 {
				step.LogIndex = int64(r.logOffset + len(r.rows))
			}
			step.LogLength++
			r.rows = append(r.rows, row)
		}
	} else {
		r.appendOutsideSteps(entry)
	}
	if result, ok := parseResult(entry.Data["stepResult"]); ok && isJobStep(entry) {
		if step.LogLength == 0 {
			step.LogIndex = int64(r.logOffset + len(r.rows))
		}
		step.Result = result
		step.StoppedAt = timestamppb.New(entry.Time)
		urgent = true
	}
	return urgent
}

// appendOutsideSteps keeps a non-output row only while no step runs: those
// rows make the "Set up job" and "Complete job" sections.
func (r *reporter) appendOutsideSteps(entry *logrus.Entry) {
	if r.duringSteps() || entry.Level > logrus.InfoLevel {
		return
	}
	if row := r.logRow(entry); row != nil {
		r.rows = append(r.rows, row)
	}
}

func (r *reporter) duringSteps() bool {
	steps := r.state.Steps
	if len(steps) == 0 {
		return false
	}
	if first := steps[0]; first.Result == runnerv1.Result_RESULT_UNSPECIFIED && first.LogLength == 0 {
		return false
	}
	return steps[len(steps)-1].Result == runnerv1.Result_RESULT_UNSPECIFIED
}

// isJobStep tells a job step's result from a composite action's inner step.
func isJobStep(entry *logrus.Entry) bool {
	ids, ok := entry.Data["stepID"].([]string)
	return !ok || len(ids) <= 1
}

var results = map[string]runnerv1.Result{
	"success":   runnerv1.Result_RESULT_SUCCESS,
	"failure":   runnerv1.Result_RESULT_FAILURE,
	"skipped":   runnerv1.Result_RESULT_SKIPPED,
	"cancelled": runnerv1.Result_RESULT_CANCELLED,
}

func parseResult(v any) (runnerv1.Result, bool) {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case fmt.Stringer:
		s = v.String()
	default:
		return 0, false
	}
	result, ok := results[s]
	return result, ok
}

var workflowCommand = regexp.MustCompile(`^::([^ :]+)( .*)?::(.*)$`)

// logRow turns an entry into a masked log row, or nil when a workflow
// command consumes it.
func (r *reporter) logRow(entry *logrus.Entry) *runnerv1.LogRow {
	content := strings.TrimRight(entry.Message, "\r\n")
	if m := workflowCommand.FindStringSubmatch(content); m != nil {
		command, value := m[1], runner.UnescapeCommandData(m[3])
		switch {
		case r.stopToken != "":
			if command == r.stopToken {
				r.stopToken = ""
				return nil
			}
		case command == "add-mask":
			r.masks = runner.AppendSecretMasker(r.masks, value)
			r.masker = strings.NewReplacer(r.masks...)
			return nil
		case command == "debug":
			if !r.debug {
				return nil
			}
			content = value
		case command == "stop-commands":
			r.stopToken = value
			return nil
		}
	}
	return &runnerv1.LogRow{
		Time:    timestamppb.New(entry.Time),
		Content: strings.ToValidUTF8(r.masker.Replace(content), "?"),
	}
}

// addMask hides value in every later log row.
func (r *reporter) addMask(value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.masks = runner.AppendSecretMasker(r.masks, value)
	r.masker = strings.NewReplacer(r.masks...)
}

// logf adds a row of the runner's own, outside the steps.
func (r *reporter) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.duringSteps() {
		r.rows = append(r.rows, &runnerv1.LogRow{
			Time:    timestamppb.Now(),
			Content: r.masker.Replace(fmt.Sprintf(format, args...)),
		})
	}
	r.notify(false)
}

// setOutputs records the job's outputs within Gitea's limits.
func (r *reporter) setOutputs(outputs map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range outputs {
		switch {
		case len(k) > maxOutputKey:
			r.rows = append(r.rows, &runnerv1.LogRow{Time: timestamppb.Now(), Content: fmt.Sprintf("ignoring output %.40q…: the name is longer than %d bytes", k, maxOutputKey)})
		case len(v) > maxOutputValue:
			r.rows = append(r.rows, &runnerv1.LogRow{Time: timestamppb.Now(), Content: fmt.Sprintf("ignoring output %q: the value is longer than %d bytes", k, maxOutputValue)})
		default:
			if _, ok := r.outputs[k]; !ok {
				r.outputs[k] = v
			}
		}
	}
	r.stateChanged = true
}

// notify wakes the sending goroutine; urgent state goes out at once.
func (r *reporter) notify(urgent bool) {
	if urgent || len(r.rows) >= logBatchSize {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// run sends logs and state until the task ends or close is called.
func (r *reporter) run() {
	defer close(r.done)
	logTicker := time.NewTicker(logInterval)
	defer logTicker.Stop()
	lastState := time.Time{}
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-r.wake:
			// Failures are logged and retried at the next tick.
			_ = r.sendLog(r.ctx, false)
			_ = r.sendState(r.ctx, false)
			lastState = time.Now()
		case <-logTicker.C:
			_ = r.sendLog(r.ctx, false)
			if time.Since(lastState) >= stateInterval {
				_ = r.sendState(r.ctx, false)
				lastState = time.Now()
			}
		}
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		if closed {
			return
		}
	}
}

// sendLog sends the buffered rows and drops those Gitea acknowledged.
func (r *reporter) sendLog(ctx context.Context, noMore bool) error {
	r.rpcMu.Lock()
	defer r.rpcMu.Unlock()
	r.mu.Lock()
	rows := r.rows
	offset := r.logOffset
	r.mu.Unlock()
	if len(rows) == 0 && !noMore {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := r.client.UpdateLog(rctx, connect.NewRequest(&runnerv1.UpdateLogRequest{
		TaskId: r.state.Id,
		Index:  int64(offset),
		Rows:   rows,
		NoMore: noMore,
	}))
	if err != nil {
		reportFailures.WithLabelValues("log").Inc()
		r.logger.Warn("sending the job log to Gitea", zap.Int64("task", r.state.Id), zap.Error(err))
		return err
	}
	ack := int(resp.Msg.AckIndex)
	if ack < offset {
		return fmt.Errorf("gitea acknowledged %d log rows, fewer than the %d it had", ack, offset)
	}
	r.mu.Lock()
	r.rows = r.rows[min(ack-offset, len(r.rows)):]
	r.logOffset = ack
	r.mu.Unlock()
	if noMore && ack < offset+len(rows) {
		return errors.New("gitea did not store every log row")
	}
	return nil
}

// sendState sends the task state; the result only when final is set.
func (r *reporter) sendState(ctx context.Context, final bool) error {
	r.rpcMu.Lock()
	defer r.rpcMu.Unlock()
	r.mu.Lock()
	state := proto.Clone(r.state).(*runnerv1.TaskState)
	outputs := map[string]string{}
	for k, v := range r.outputs {
		if !r.sentOutputs[k] {
			outputs[k] = v
		}
	}
	r.stateChanged = false
	r.mu.Unlock()
	if !final {
		state.Result = runnerv1.Result_RESULT_UNSPECIFIED
	}
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := r.client.UpdateTask(rctx, connect.NewRequest(&runnerv1.UpdateTaskRequest{State: state, Outputs: outputs}))
	if err != nil {
		reportFailures.WithLabelValues("state").Inc()
		r.logger.Warn("sending the job state to Gitea", zap.Int64("task", r.state.Id), zap.Error(err))
		r.mu.Lock()
		r.stateChanged = true
		r.mu.Unlock()
		return err
	}
	r.mu.Lock()
	for _, k := range resp.Msg.SentOutputs {
		r.sentOutputs[k] = true
	}
	r.mu.Unlock()
	// A result from Gitea (a user cancelled the run) ends the job.
	if s := resp.Msg.GetState(); s != nil && s.Result != runnerv1.Result_RESULT_UNSPECIFIED && !final {
		r.cancel()
	}
	return nil
}

// result is the task's result so far.
func (r *reporter) result() runnerv1.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state.Result
}

// close ends reporting: a job that has no result yet failed (lastWords
// says why), and the rest of the log and the final state are sent on a
// context detached from the task's, retried for a bounded time.
// failJob turns a job act reported successful into a failed one: what
// the runner does for the job after act, such as a required automatic
// push, failed.
func (r *reporter) failJob() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state.Result == runnerv1.Result_RESULT_SUCCESS {
		r.state.Result = runnerv1.Result_RESULT_FAILURE
		r.stateChanged = true
	}
}

func (r *reporter) close(lastWords string) error {
	r.mu.Lock()
	r.closed = true
	now := timestamppb.Now()
	if r.state.Result == runnerv1.Result_RESULT_UNSPECIFIED {
		if lastWords == "" {
			lastWords = "Early termination"
		}
		for _, s := range r.state.Steps {
			if s.Result == runnerv1.Result_RESULT_UNSPECIFIED {
				s.Result = runnerv1.Result_RESULT_CANCELLED
			}
		}
		r.state.Result = runnerv1.Result_RESULT_FAILURE
		r.state.StoppedAt = now
	}
	// Gitea ignores no_more on an empty request, so the last one always
	// carries a row.
	if lastWords != "" || len(r.rows) == 0 {
		r.rows = append(r.rows, &runnerv1.LogRow{Time: now, Content: r.masker.Replace(lastWords)})
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	<-r.done
	return errors.Join(
		r.retryFinal(func(ctx context.Context) error { return r.sendLog(ctx, true) }),
		r.retryFinal(func(ctx context.Context) error { return r.sendState(ctx, true) }),
	)
}

func (r *reporter) retryFinal(send func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*closeTimeout)
	defer cancel()
	var err error
	for wait := 250 * time.Millisecond; ; wait *= 2 {
		attempt, attemptCancel := context.WithTimeout(ctx, closeTimeout)
		err = send(attempt)
		attemptCancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("final report: %w", err)
		case <-time.After(wait):
		}
	}
}
