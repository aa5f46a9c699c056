package caddyrunner

import (
	"maps"
	"slices"
	"strings"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
)

// finishedKept is how many finished tasks a runner remembers for its
// status.
const finishedKept = 50

// The states a runner is in, as its status says.
const (
	StateIdle       = "idle"
	StateRunning    = "running"
	StateBackingOff = "backing off"
	StateDraining   = "draining"
	StateDrained    = "drained"
	StateStopped    = "stopped"
)

// JobStatus is one task as the status endpoint and the status page show
// it: what it runs, where to see it in Gitea, and how it ended.
type JobStatus struct {
	ID         int64  `json:"id"`
	Repository string `json:"repository"`
	Workflow   string `json:"workflow,omitempty"`
	Job        string `json:"job"`
	Ref        string `json:"ref,omitempty"`
	Event      string `json:"event,omitempty"`
	// RunURL is the run's page in Gitea.
	RunURL  string    `json:"run_url,omitempty"`
	Started time.Time `json:"started"`
	// Finished and Result are set once the task has ended; Result is
	// success, failure, cancelled or skipped as Gitea records it.
	Finished *time.Time `json:"finished,omitempty"`
	Result   string     `json:"result,omitempty"`
}

// jobStatusOf describes a task Gitea handed the runner of instance.
func jobStatusOf(task *runnerv1.Task, instance string, started time.Time) *JobStatus {
	fields := task.GetContext().GetFields()
	str := func(name string) string { return fields[name].GetStringValue() }
	return &JobStatus{
		ID:         task.Id,
		Repository: str("repository"),
		Workflow:   str("workflow"),
		Job:        str("job"),
		Ref:        str("ref"),
		Event:      str("event_name"),
		RunURL:     runURL(instance, str("repository"), str("run_id")),
		Started:    started,
	}
}

// runURL is the page of a repository's run in Gitea, which names runs by
// their id.
func runURL(instance, repository, runID string) string {
	if repository == "" || runID == "" {
		return ""
	}
	return strings.TrimSuffix(instance, "/") + "/" + repository + "/actions/runs/" + runID
}

// RunnerStatus is one runner as the status endpoint and the status page
// show it. It holds nothing secret: no token, no registration secret.
type RunnerStatus struct {
	Instance string   `json:"instance"`
	ID       int64    `json:"id,omitempty"`
	Name     string   `json:"name"`
	Labels   []string `json:"labels"`
	Capacity int      `json:"capacity"`
	// State is idle, running, backing off, draining, drained or stopped;
	// Error says why for backing off and stopped.
	State    string `json:"state"`
	Error    string `json:"error,omitempty"`
	Draining bool   `json:"draining"`
	// Failures counts the polls that failed in a row, and RetryAt is when
	// the next one is made, while backing off.
	Failures int         `json:"failures,omitempty"`
	RetryAt  *time.Time  `json:"retry_at,omitempty"`
	Running  []JobStatus `json:"running"`
	// Finished are the last tasks that ended, newest first.
	Finished    []JobStatus `json:"finished"`
	LastPoll    *time.Time  `json:"last_successful_poll,omitempty"`
	LastWebhook *time.Time  `json:"last_webhook,omitempty"`
	// TasksFetched counts the tasks taken since the runner started, by
	// what made it ask: "webhook" or "poll".
	TasksFetched map[string]int `json:"tasks_fetched"`
	Webhook      bool           `json:"webhook"`
	// WebhookID is the webhook the runner keeps in Gitea with its
	// api_token, and WebhookError why it could not.
	WebhookID     int64  `json:"webhook_id,omitempty"`
	WebhookError  string `json:"webhook_error,omitempty"`
	Ephemeral     bool   `json:"ephemeral,omitempty"`
	LastError     string `json:"last_error,omitempty"`
	IdentityStore string `json:"identity"`
}

// Runners returns the status of every runner this process runs, by name.
func Runners() []RunnerStatus {
	statuses := []RunnerStatus{}
	for _, d := range allDaemons() {
		statuses = append(statuses, d.status())
	}
	slices.SortFunc(statuses, func(a, b RunnerStatus) int { return strings.Compare(a.Name, b.Name) })
	return statuses
}

func (d *daemon) status() RunnerStatus {
	s := d.settings()
	d.mu.Lock()
	defer d.mu.Unlock()
	st := RunnerStatus{
		Instance:      d.instance,
		Name:          s.name,
		Labels:        s.labelSpecs,
		Capacity:      s.capacity,
		Draining:      d.draining,
		Failures:      d.failures,
		Running:       []JobStatus{},
		Finished:      make([]JobStatus, 0, len(d.finished)),
		LastError:     d.lastErr,
		IdentityStore: d.store.String(),
		TasksFetched:  maps.Clone(d.fetchedBy),
		Webhook:       s.webhook != nil,
		WebhookID:     d.hookID,
		WebhookError:  d.hookErr,
	}
	if d.id != nil {
		st.ID = d.id.ID
		st.Ephemeral = d.id.Ephemeral
	}
	st.LastWebhook = timeOrNil(d.lastWebhook)
	st.LastPoll = timeOrNil(d.lastPoll)
	st.RetryAt = timeOrNil(d.retryAt)
	for _, task := range d.running {
		st.Running = append(st.Running, *task)
	}
	slices.SortFunc(st.Running, func(a, b JobStatus) int { return int(a.ID - b.ID) })
	for _, task := range slices.Backward(d.finished) {
		st.Finished = append(st.Finished, task)
	}
	switch {
	case d.stopped != "":
		st.State, st.Error = StateStopped, d.stopped
	case d.failures > 0:
		st.State, st.Error = StateBackingOff, d.lastErr
	case d.draining && len(d.running) > 0:
		st.State = StateDraining
	case d.draining:
		st.State = StateDrained
	case len(d.running) > 0:
		st.State = StateRunning
	default:
		st.State = StateIdle
	}
	return st
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// recordResult notes how a running task ended, as reported to Gitea.
func (d *daemon) recordResult(id int64, result string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if task, ok := d.running[id]; ok {
		task.Result = result
	}
}

// finish moves a task from the running ones to the finished ones.
func (d *daemon) finish(id int64, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	task, ok := d.running[id]
	if !ok {
		return
	}
	delete(d.running, id)
	task.Finished = &at
	if task.Result == "" {
		task.Result = "unknown"
	}
	if len(d.finished) == finishedKept {
		d.finished = slices.Delete(d.finished, 0, 1)
	}
	d.finished = append(d.finished, *task)
}
