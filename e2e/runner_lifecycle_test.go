package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// runnerStatus is what GET /gitea-runner/status answers.
type runnerStatus struct {
	Runners []struct {
		ID       int64    `json:"id"`
		Name     string   `json:"name"`
		Labels   []string `json:"labels"`
		Capacity int      `json:"capacity"`
		Draining bool     `json:"draining"`
		Running  []struct {
			ID         int64  `json:"id"`
			Repository string `json:"repository"`
			Job        string `json:"job"`
		} `json:"running"`
		LastError string `json:"last_error"`
		// What the runner learnt from webhooks, and the webhook it keeps.
		Webhook      bool           `json:"webhook"`
		WebhookID    int64          `json:"webhook_id"`
		WebhookError string         `json:"webhook_error"`
		TasksFetched map[string]int `json:"tasks_fetched"`
		LastWebhook  *time.Time     `json:"last_webhook"`
	} `json:"runners"`
}

func adminStatus(t *testing.T, c *harness.Caddy) runnerStatus {
	t.Helper()
	var st runnerStatus
	body := adminGet(t, c, "/gitea-runner/status")
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("status is not JSON: %v\n%s", err, body)
	}
	return st
}

// waitRegistered waits until the runner reports its Gitea id.
func waitRegistered(t *testing.T, c *harness.Caddy) int64 {
	t.Helper()
	var id int64
	err := harness.Eventually(time.Minute, 200*time.Millisecond, func() error {
		st := adminStatus(t, c)
		if len(st.Runners) == 1 && st.Runners[0].ID != 0 {
			id = st.Runners[0].ID
			return nil
		}
		return fmt.Errorf("status: %+v", st)
	})
	if err != nil {
		t.Fatalf("the runner did not register: %v", err)
	}
	return id
}

func jobWorkflow(job, script string) string {
	return fmt.Sprintf(`on: [push]
jobs:
  %s:
    runs-on: e2e
    defaults:
      run:
        shell: sh
    steps:
      - run: |
%s
`, job, indent(script, "          "))
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}

func TestRunnerCapacity(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	for _, capacity := range []int{1, 2} {
		t.Run(fmt.Sprint("capacity ", capacity), func(t *testing.T) {
			g, token := harness.StartGiteaWithRepo(t, "capacity")
			harness.StartCaddy(t, runnerCaddyfile(g, token, image,
				fmt.Sprintf("capacity %d", capacity)), harness.CaddyOptions{NoHTTP: true})
			sha := g.CommitWorkflows("capacity", map[string]string{
				"a.yml": jobWorkflow("a", "sleep 6"),
				"b.yml": jobWorkflow("b", "sleep 6"),
			})
			runs := g.WaitRuns("capacity", sha, 2, 3*time.Minute, harness.Completed)
			var jobs [2]struct{ start, end time.Time }
			for i, run := range runs {
				if run.Conclusion != "success" {
					t.Fatalf("run %d concluded %q", run.ID, run.Conclusion)
				}
				js := g.Jobs("capacity", run.ID)
				jobs[i].start, jobs[i].end = js[0].StartedAt, js[0].CompletedAt
			}
			overlap := jobs[0].start.Before(jobs[1].end) && jobs[1].start.Before(jobs[0].end)
			if capacity == 1 && overlap {
				t.Fatalf("with capacity 1 the jobs overlapped: %+v", jobs)
			}
			if capacity == 2 && !overlap {
				t.Fatalf("with capacity 2 the jobs ran one after the other: %+v", jobs)
			}
		})
	}
}

func TestRunnerCancelStopsJobAndContainer(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	g, token := harness.StartGiteaWithRepo(t, "cancel")
	harness.StartCaddy(t, runnerCaddyfile(g, token, image), harness.CaddyOptions{NoHTTP: true})
	sha := g.CommitWorkflow("cancel", "ci.yml", jobWorkflow("sleeper", "echo sleeping\nsleep 300"))
	run := g.WaitRun("cancel", sha, 2*time.Minute, harness.InProgress)
	// This job's containers alone: another test's job (or an earlier run's)
	// may still be ending.
	containers := func() string {
		return strings.TrimSpace(docker.Must("ps", "-a", "--filter", "name=GITEA-ACTIONS-TASK-.*-JOB-sleeper-", "--format", "{{.Names}}"))
	}
	if err := harness.Eventually(time.Minute, 200*time.Millisecond, func() error {
		if containers() == "" {
			return fmt.Errorf("no job container yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	g.CancelRun("cancel", run.ID)
	cancelled := time.Now()
	done := g.WaitRun("cancel", sha, 30*time.Second, harness.Completed)
	if done.Conclusion != "cancelled" {
		t.Fatalf("run concluded %q, want cancelled", done.Conclusion)
	}
	if err := harness.Eventually(10*time.Second, 200*time.Millisecond, func() error {
		if names := containers(); names != "" {
			return fmt.Errorf("containers still there: %s", names)
		}
		return nil
	}); err != nil {
		t.Fatalf("job container not removed after the cancel: %v", err)
	}
	t.Logf("run cancelled and its container removed %v after the cancel", time.Since(cancelled).Round(100*time.Millisecond))
}

func TestRunnerSurvivesReloadAndRestart(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	g, token := harness.StartGiteaWithRepo(t, "reload")
	caddy := harness.StartCaddy(t, runnerCaddyfile(g, token, image), harness.CaddyOptions{NoHTTP: true})
	id := waitRegistered(t, caddy)

	sha := g.CommitWorkflow("reload", "ci.yml", jobWorkflow("long", "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 1; done"))
	g.WaitRun("reload", sha, 2*time.Minute, harness.InProgress)
	if err := caddy.Reload(runnerCaddyfile(g, token, image, "labels extra:host", "capacity 2")); err != nil {
		t.Fatal(err)
	}
	run := g.WaitRun("reload", sha, 2*time.Minute, harness.Completed)
	if run.Conclusion != "success" {
		t.Fatalf("the job running across the reload concluded %q", run.Conclusion)
	}
	log := g.JobLog("reload", g.Jobs("reload", run.ID)[0].ID)
	if !strings.Contains(log, "tick 10") {
		t.Fatalf("the job's log is incomplete after the reload:\n%s", log)
	}
	err := harness.Eventually(30*time.Second, 500*time.Millisecond, func() error {
		runners := g.RepoRunners("reload")
		if len(runners) != 1 {
			return fmt.Errorf("gitea lists %d runners, want 1", len(runners))
		}
		var names []string
		for _, l := range runners[0].Labels {
			names = append(names, l.Name)
		}
		if !slices.Contains(names, "extra") || runners[0].ID != id {
			return fmt.Errorf("runner %d has labels %v, want id %d with the new label extra", runners[0].ID, names, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := adminStatus(t, caddy); len(st.Runners) != 1 || st.Runners[0].Capacity != 2 {
		t.Fatalf("after the reload the status is %+v, want one runner with capacity 2", st)
	}

	caddy.Stop()
	caddy.Start()
	if again := waitRegistered(t, caddy); again != id {
		t.Fatalf("after a restart the runner is %d, want the same runner %d", again, id)
	}
	if runners := g.RepoRunners("reload"); len(runners) != 1 {
		t.Fatalf("gitea lists %d runners after the restart, want 1", len(runners))
	}
}

func TestRunnerSurvivesGiteaRestart(t *testing.T) {
	g, _ := startRunner(t, "outage")
	const lines = 80
	sha := g.CommitWorkflow("outage", "ci.yml", jobWorkflow("steady",
		fmt.Sprintf("i=1\nwhile [ $i -le %d ]; do echo line-$i; i=$((i+1)); sleep 0.5; done", lines)))
	g.WaitRun("outage", sha, 2*time.Minute, harness.InProgress)
	time.Sleep(5 * time.Second)
	g.Stop()
	time.Sleep(20 * time.Second)
	g.Start()
	run := g.WaitRun("outage", sha, 3*time.Minute, harness.Completed)
	if run.Conclusion != "success" {
		t.Fatalf("run concluded %q after Gitea's outage", run.Conclusion)
	}
	log := g.JobLog("outage", g.Jobs("outage", run.ID)[0].ID)
	for i := 1; i <= lines; i++ {
		if !strings.Contains(log, fmt.Sprintf("line-%d\n", i)) {
			t.Fatalf("line-%d is missing from the job's log:\n%s", i, log)
		}
	}
}

func TestRunnerHostLabel(t *testing.T) {
	g, token := harness.StartGiteaWithRepo(t, "host")
	harness.StartCaddy(t, harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: g.URL, RegistrationToken: token, Labels: "e2e:host", Options: []string{"fetch_interval 500ms"},
	}}.String(), harness.CaddyOptions{NoHTTP: true})
	marker := filepath.Join(t.TempDir(), "ran-on-host")
	sha := g.CommitWorkflow("host", "ci.yml", fmt.Sprintf(`on: [push]
jobs:
  onhost:
    runs-on: e2e
    steps:
      - run: echo host-job > %s
`, marker))
	run := g.WaitRun("host", sha, 2*time.Minute, harness.Completed)
	if run.Conclusion != "success" {
		t.Fatalf("host job concluded %q:\n%s", run.Conclusion, g.JobLog("host", g.Jobs("host", run.ID)[0].ID))
	}
	if data, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(data)) != "host-job" {
		t.Fatalf("the host job did not write %s on this host: %q, %v", marker, data, err)
	}
}

func TestRunnerRegistersWithAPIToken(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	g := harness.StartGitea(t, "")
	g.CreateRepo("apitoken")
	caddy := harness.StartCaddy(t, harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: g.URL, Labels: "e2e:docker://" + image,
		Options:   []string{"api_token " + g.Token, "scope repo " + harness.GiteaAdmin + "/apitoken", "fetch_interval 500ms"},
		Container: []string{"network host"},
	}}.String(), harness.CaddyOptions{NoHTTP: true})
	waitRegistered(t, caddy)
	sha := g.CommitWorkflow("apitoken", "ci.yml", jobWorkflow("hello", "echo registered-by-api-token"))
	run := g.WaitRun("apitoken", sha, 2*time.Minute, harness.Completed)
	if run.Conclusion != "success" {
		t.Fatalf("run concluded %q", run.Conclusion)
	}
	if runners := g.RepoRunners("apitoken"); len(runners) != 1 {
		t.Fatalf("gitea lists %d runners for the repository, want 1", len(runners))
	}
}

func TestRunnerIdentityIsExclusive(t *testing.T) {
	g, token := harness.StartGiteaWithRepo(t, "exclusive")
	state := filepath.Join(t.TempDir(), ".runner")
	config := harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: g.URL, RegistrationToken: token, Labels: "e2e:host", Options: []string{"state_file " + state},
	}}.String()
	first := harness.StartCaddy(t, config, harness.CaddyOptions{NoHTTP: true})
	waitRegistered(t, first)
	info, err := os.Stat(state)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("state file %s: %v, %v; want mode 0600", state, info, err)
	}

	second := filepath.Join(t.TempDir(), "Caddyfile")
	os.WriteFile(second, []byte(config), 0o644)
	c := harness.Run([]string{"CADDY_ADMIN=" + harness.AdminSocket(t), "XDG_DATA_HOME=" + t.TempDir()}, "",
		harness.CaddyBinary(t, "caddy"), "run", "--config", second, "--adapter", "caddyfile")
	if c.Err == nil || !strings.Contains(c.Output, "in use by another process") {
		t.Fatalf("a second caddy on the same identity should refuse to start:\n%s", c)
	}
}

func TestRunnerStartsWhileGiteaIsDown(t *testing.T) {
	g, token := harness.StartGiteaWithRepo(t, "late")
	g.Stop()
	caddy := harness.StartCaddy(t, harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: g.URL, RegistrationToken: token, Labels: "e2e:host",
	}}.String(), harness.CaddyOptions{NoHTTP: true})
	if err := harness.Eventually(30*time.Second, 200*time.Millisecond, func() error {
		if st := adminStatus(t, caddy); len(st.Runners) != 1 || st.Runners[0].LastError == "" {
			return fmt.Errorf("status %+v shows no error yet", st)
		}
		return nil
	}); err != nil {
		t.Fatalf("caddy started, but the status does not say why the runner is not registered: %v", err)
	}
	g.Start()
	waitRegistered(t, caddy)
}

func TestRunnerDrainAndResume(t *testing.T) {
	g, caddy := startRunner(t, "drain")
	waitRegistered(t, caddy)
	post := func(path string) {
		resp, err := caddy.AdminDo(http.MethodPost, path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("POST %s: %s", path, resp.Status)
		}
	}
	post("/gitea-runner/drain")
	sha := g.CommitWorkflow("drain", "ci.yml", jobWorkflow("waiting", "echo resumed"))
	time.Sleep(5 * time.Second)
	if run := g.WaitRun("drain", sha, time.Minute, func(harness.RunStatus) bool { return true }); run.Status != "queued" {
		t.Fatalf("a drained runner took the job: run is %s", run.Status)
	}
	if st := adminStatus(t, caddy); !st.Runners[0].Draining {
		t.Fatalf("status does not show draining: %+v", st)
	}
	post("/gitea-runner/resume")
	if run := g.WaitRun("drain", sha, 2*time.Minute, harness.Completed); run.Conclusion != "success" {
		t.Fatalf("after resume the run concluded %q", run.Conclusion)
	}
}

func TestRunnerStopsPollingWhenDeleted(t *testing.T) {
	g, token := harness.StartGiteaWithRepo(t, "deleted")
	caddy := harness.StartCaddy(t, harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: g.URL, RegistrationToken: token, Labels: "e2e:host", Options: []string{"fetch_interval 500ms"},
	}}.String(), harness.CaddyOptions{NoHTTP: true})
	id := waitRegistered(t, caddy)
	if _, err := g.Client.DeleteRepoActionRunner(harness.GiteaAdmin, "deleted", id); err != nil {
		t.Fatalf("deleting runner %d in Gitea: %v", id, err)
	}
	if err := harness.Eventually(30*time.Second, 250*time.Millisecond, func() error {
		st := adminStatus(t, caddy)
		if len(st.Runners) == 1 && strings.Contains(st.Runners[0].LastError, "register again") {
			return nil
		}
		return fmt.Errorf("status %+v does not say to register again", st)
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(caddy.Log(), "polling stopped") {
		t.Fatalf("caddy's log does not say polling stopped:\n%s", caddy.Log())
	}
}
