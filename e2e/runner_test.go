package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// runnerCaddyfile is a Caddyfile that runs only the runner, on the busybox
// job image with host networking and no Docker socket in jobs.
// options go into the gitea_runner block.
func runnerCaddyfile(g *harness.Gitea, token, image string, options ...string) string {
	return harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: g.URL, RegistrationToken: token, Labels: "e2e:docker://" + image,
		Options:   append([]string{"name e2e-runner", "fetch_interval 500ms"}, options...),
		Container: []string{"network host", "docker_host -"},
	}}.String()
}

// startRunner starts Gitea with the repository repo and a caddy whose
// gitea_runner, registered for that repository, runs jobs labelled e2e in the
// busybox job image; options go into the gitea_runner block.
func startRunner(t *testing.T, repo string, options ...string) (*harness.Gitea, *harness.Caddy) {
	t.Helper()
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, repo)
	caddy := harness.StartCaddy(t, runnerCaddyfile(g, token, image, options...), harness.CaddyOptions{NoHTTP: true})
	return g, caddy
}

const twoJobWorkflow = `on: [push]
jobs:
  first:
    runs-on: e2e
    defaults:
      run:
        shell: sh
    outputs:
      greeting: ${{ steps.out.outputs.greeting }}
    steps:
      - id: out
        run: echo "greeting=hello-from-first" >> "$GITHUB_OUTPUT"
      - run: echo "secret is ${{ secrets.E2E_SECRET }}"
      - run: echo "var is ${{ vars.E2E_VAR }}"
      - run: echo "env is $JOB_ENV in $GITHUB_REPOSITORY"
        env:
          JOB_ENV: from-env
      - run: |
          echo "::add-mask::mask-me-please"
          echo "masked value mask-me-please"
          echo "task token ${{ github.token }}"
      - run: test ! -e /var/run/docker.sock && echo "no docker socket in the job"
  second:
    needs: first
    runs-on: e2e
    defaults:
      run:
        shell: sh
    steps:
      - run: echo "first said ${{ needs.first.outputs.greeting }}"
`

func TestRunnerRunsWorkflowWithNeedsSecretsAndVars(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	g, token := harness.StartGiteaWithRepo(t, "jobs")
	const secret = "s3cr3t-value-that-must-not-leak"
	g.SetSecret("jobs", "E2E_SECRET", secret)
	g.SetVariable("jobs", "E2E_VAR", "variable-value")
	caddy := harness.StartCaddy(t, runnerCaddyfile(g, token, image), harness.CaddyOptions{NoHTTP: true})

	sha := g.CommitWorkflow("jobs", "ci.yml", twoJobWorkflow)
	run := g.WaitRun("jobs", sha, 3*time.Minute, harness.Completed)
	jobs := g.Jobs("jobs", run.ID)
	logs := map[string]string{}
	for _, job := range jobs {
		logs[job.Name] = g.JobLog("jobs", job.ID)
	}
	if run.Conclusion != "success" {
		t.Fatalf("run concluded %q, want success; job logs:\n%v", run.Conclusion, logs)
	}
	for _, want := range []string{"secret is ***", "var is variable-value", "env is from-env in ci/jobs",
		"masked value ***", "task token ***", "no docker socket in the job"} {
		if !strings.Contains(logs["first"], want) {
			t.Errorf("first job's log lacks %q:\n%s", want, logs["first"])
		}
	}
	if !strings.Contains(logs["second"], "first said hello-from-first") {
		t.Errorf("second job did not see the first one's output:\n%s", logs["second"])
	}
	for name, log := range logs {
		if strings.Contains(log, secret) {
			t.Errorf("job %s's log shows the secret:\n%s", name, log)
		}
		// The script's own text is shown before ::add-mask:: runs, as on
		// GitHub; what it prints afterwards must be masked.
		for line := range strings.Lines(log) {
			if strings.HasSuffix(strings.TrimSpace(line), "Z masked value mask-me-please") {
				t.Errorf("job %s printed a masked value: %q", name, line)
			}
		}
	}
	if err := harness.Eventually(10*time.Second, 100*time.Millisecond, func() error {
		if n := metric(t, caddy, `caddy_gitea_runner_tasks_total{result="success"}`); n != 2 {
			return fmt.Errorf("tasks_total{result=success} = %v, want 2", n)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	for _, job := range jobs {
		if len(job.Steps) == 0 {
			t.Errorf("job %s has no steps in Gitea", job.Name)
		}
		for _, step := range job.Steps {
			if step.Conclusion != "success" {
				t.Errorf("job %s step %q concluded %q", job.Name, step.Name, step.Conclusion)
			}
		}
	}
}

func TestRunnerReportsFailingStep(t *testing.T) {
	g, _ := startRunner(t, "failing")

	sha := g.CommitWorkflow("failing", "ci.yml", `on: [push]
jobs:
  broken:
    runs-on: e2e
    defaults:
      run:
        shell: sh
    steps:
      - run: echo before the failure
      - run: echo failing now; exit 3
      - run: echo never runs
`)
	run := g.WaitRun("failing", sha, 3*time.Minute, harness.Completed)
	if run.Conclusion != "failure" {
		t.Fatalf("run concluded %q, want failure", run.Conclusion)
	}
	jobs := g.Jobs("failing", run.ID)
	if len(jobs) != 1 {
		t.Fatalf("want one job, got %d", len(jobs))
	}
	log := g.JobLog("failing", jobs[0].ID)
	if !strings.Contains(log, "failing now") || strings.Contains(log, "never runs") {
		t.Fatalf("job log:\n%s", log)
	}
	var conclusions []string
	for _, step := range jobs[0].Steps {
		conclusions = append(conclusions, step.Name+"="+step.Conclusion)
	}
	got := strings.Join(conclusions, " ")
	if !strings.Contains(got, "echo failing now; exit 3=failure") {
		t.Fatalf("the failing step is not marked failed: %s", got)
	}
}

func TestRunnerTimeoutBoundsJob(t *testing.T) {
	g, _ := startRunner(t, "timeout", "timeout 5s")
	sha := g.CommitWorkflow("timeout", "ci.yml", jobWorkflow("endless", "echo started\nsleep 120"))
	run := g.WaitRun("timeout", sha, time.Minute, harness.Completed)
	if run.Conclusion == "success" {
		t.Fatalf("a job past the runner's timeout succeeded")
	}
	if elapsed := run.CompletedAt.Sub(run.StartedAt); elapsed > time.Minute {
		t.Fatalf("the job ran %v despite timeout 5s", elapsed)
	}
	log := g.JobLog("timeout", g.Jobs("timeout", run.ID)[0].ID)
	if !strings.Contains(log, "timeout") {
		t.Errorf("the job's log does not say it timed out:\n%s", log)
	}
}

func TestRunnerShutdownLetsJobsFinish(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	g, token := harness.StartGiteaWithRepo(t, "shutdown")
	caddy := harness.StartCaddy(t, runnerCaddyfile(g, token, image, "shutdown_timeout 2m"), harness.CaddyOptions{NoHTTP: true})
	sha := g.CommitWorkflow("shutdown", "ci.yml", jobWorkflow("finishing", "sleep 8\necho finished-after-shutdown"))
	g.WaitRun("shutdown", sha, time.Minute, harness.InProgress)
	caddy.Stop() // SIGTERM: caddy waits for the job
	run := g.WaitRun("shutdown", sha, 30*time.Second, harness.Completed)
	if run.Conclusion != "success" {
		t.Fatalf("a job running at shutdown concluded %q, want success within shutdown_timeout", run.Conclusion)
	}
	if log := g.JobLog("shutdown", g.Jobs("shutdown", run.ID)[0].ID); !strings.Contains(log, "finished-after-shutdown") {
		t.Fatalf("log:\n%s", log)
	}

	// With no grace, a running job is cancelled and reported at once.
	caddy = harness.StartCaddy(t, runnerCaddyfile(g, token, image), harness.CaddyOptions{NoHTTP: true})
	sha = g.CommitWorkflow("shutdown", "ci2.yml", jobWorkflow("endless", "sleep 300"))
	g.WaitRuns("shutdown", sha, 2, time.Minute, func(s harness.RunStatus) bool { return true })
	var endless int64
	for _, r := range g.WaitRuns("shutdown", sha, 2, 2*time.Minute, func(s harness.RunStatus) bool { return s.Status != "queued" }) {
		if strings.HasSuffix(r.Path, "ci2.yml@refs/heads/main") {
			endless = r.ID
		}
	}
	if err := harness.Eventually(time.Minute, 250*time.Millisecond, func() error {
		run, _, err := g.Client.GetRepoActionRun(harness.GiteaAdmin, "shutdown", endless)
		if err != nil || run.Status != "in_progress" {
			return fmt.Errorf("run %d: %v %v", endless, run, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	caddy.Stop()
	if err := harness.Eventually(30*time.Second, 250*time.Millisecond, func() error {
		run, _, err := g.Client.GetRepoActionRun(harness.GiteaAdmin, "shutdown", endless)
		if err != nil || run.Status != "completed" {
			return fmt.Errorf("run %d not completed: %v %v", endless, run, err)
		}
		if run.Conclusion == "success" {
			return fmt.Errorf("the cancelled job concluded success")
		}
		return nil
	}); err != nil {
		t.Fatalf("a job cancelled by shutdown was not reported: %v", err)
	}
}
