package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestGiteaCutOffDuringJobs cuts the runner off from Gitea for 30 s while
// two jobs run and finish: once Gitea is reachable again both jobs'
// results and whole logs land, each line once, neither job runs twice,
// and meanwhile the runner, with a free slot, kept asking for work no
// more often than its backoff allows and no less often than
// fetch_interval_max.
func TestGiteaCutOffDuringJobs(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "cutoff")
	counter := harness.StartRPCCounter(t, g.URL)
	const fetchMax = 8 * time.Second
	caddy := harness.StartCaddy(t, harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: counter.URL, RegistrationToken: token, Labels: "e2e:docker://" + image,
		Options: []string{"name e2e-runner", "fetch_interval 500ms",
			fmt.Sprintf("fetch_interval_max %s", fetchMax), "capacity 3"},
		Container: []string{"network host", "docker_host -"},
	}}.String(), harness.CaddyOptions{NoHTTP: true})

	const ticks = 20
	script := fmt.Sprintf("i=1\nwhile [ $i -le %d ]; do echo tick-$i; i=$((i+1)); sleep 1; done", ticks)
	sha := g.CommitWorkflows("cutoff", map[string]string{
		"a.yml": jobWorkflow("a", script),
		"b.yml": jobWorkflow("b", script),
	})
	waitTasksReceived(t, g, "cutoff", g.WaitRuns("cutoff", sha, 2, 3*time.Minute, harness.InProgress))
	time.Sleep(3 * time.Second)
	counter.Cut()
	cutAt := time.Now()
	time.Sleep(30 * time.Second) // the jobs end in the meantime
	counter.Restore()

	runs := g.WaitRuns("cutoff", sha, 2, 3*time.Minute, harness.Completed)
	checkTicked(t, g, caddy, "cutoff", runs, ticks)

	fetches := counter.Dropped("FetchTask")
	if len(fetches) < 3 {
		t.Fatalf("while cut off the runner asked for work %d times; it should keep trying", len(fetches))
	}
	longest := fetches[0].Sub(cutAt)
	for i := 1; i < len(fetches); i++ {
		longest = max(longest, fetches[i].Sub(fetches[i-1]))
	}
	// Steady polling would ask 60 times in 30 s; backoff doubles the wait
	// up to fetch_interval_max, with ±20% jitter.
	if len(fetches) > 15 || longest > fetchMax*6/5+time.Second {
		t.Errorf("while cut off for 30 s the runner asked for work %d times, at most %v apart; want backoff to %v", len(fetches), longest, fetchMax)
	}
	t.Logf("cut off for 30 s: %d FetchTask calls, at most %v apart; UpdateLog tried %d times, UpdateTask %d times",
		len(fetches), longest.Round(time.Millisecond), len(counter.Dropped("UpdateLog")), len(counter.Dropped("UpdateTask")))
}

// TestGiteaRestartsDuringJobs restarts Gitea ten times while two jobs run:
// both end with their whole logs, each line once, and neither runs twice.
func TestGiteaRestartsDuringJobs(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "restarts")
	caddy := harness.StartCaddy(t, runnerCaddyfile(g, token, image, "capacity 2"), harness.CaddyOptions{NoHTTP: true})

	const ticks = 45
	script := fmt.Sprintf("i=1\nwhile [ $i -le %d ]; do echo tick-$i; i=$((i+1)); sleep 1; done", ticks)
	sha := g.CommitWorkflows("restarts", map[string]string{
		"a.yml": jobWorkflow("a", script),
		"b.yml": jobWorkflow("b", script),
	})
	waitTasksReceived(t, g, "restarts", g.WaitRuns("restarts", sha, 2, 3*time.Minute, harness.InProgress))
	start := time.Now()
	for range 10 {
		g.Stop()
		time.Sleep(500 * time.Millisecond)
		g.Start()
		time.Sleep(time.Second)
	}
	t.Logf("restarted Gitea 10 times in %v", time.Since(start).Round(time.Second))

	runs := g.WaitRuns("restarts", sha, 2, 5*time.Minute, harness.Completed)
	checkTicked(t, g, caddy, "restarts", runs, ticks)
}

// TestFullWorkDirFailsTheJobWithTheReason gives the runner a work_dir on a
// full tmpfs: a job it cannot write the credential files of is reported
// failed, with the reason in its log, and runs nothing; once there is room
// again the next job succeeds.
func TestFullWorkDirFailsTheJobWithTheReason(t *testing.T) {
	workDir := harness.Tmpfs(t, "256k")
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "fullwork")
	filler := filepath.Join(workDir, "filler")
	if err := os.WriteFile(filler, make([]byte, 1<<20), 0o600); err == nil {
		t.Fatal("a 1 MiB file fits in the 256 KiB work_dir")
	}
	secret, _ := keygen(t, "fullwork-1")
	config := harness.RunnerCache(g.URL, token, "e2e:docker://"+image, "host",
		filepath.Join(t.TempDir(), "nix"), secret, "fetch_interval 500ms", "work_dir "+workDir)
	config.Runner.Container = append(config.Runner.Container, "docker_host -")
	harness.StartCaddy(t, config.String(), harness.CaddyOptions{})

	script := "echo ran-$((40+2))"
	sha := g.CommitWorkflow("fullwork", "ci.yml", jobWorkflow("full", script))
	run := g.WaitRun("fullwork", sha, 3*time.Minute, harness.Completed)
	log := g.JobLog("fullwork", g.Jobs("fullwork", run.ID)[0].ID)
	if run.Conclusion != "failure" || !strings.Contains(log, "no space left on device") || strings.Contains(log, "ran-42") {
		t.Fatalf("a job whose files the full work_dir cannot take concluded %q:\n%s", run.Conclusion, log)
	}
	for line := range strings.Lines(log) {
		if strings.Contains(line, "no space left on device") {
			t.Logf("the failed job's log says: %s", strings.TrimSpace(line))
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	sha = g.CommitFile("fullwork", "again", "once there is room\n")
	run = g.WaitRun("fullwork", sha, 3*time.Minute, harness.Completed)
	if log := g.SucceededLog("fullwork", run); !strings.Contains(log, "ran-42") {
		t.Fatalf("with room again the job did not run:\n%s", log)
	}
}

// checkTicked checks that each run succeeded with a log holding every one
// of ticks lines once, and that each ran once: the runner received its task
// once and finished as many tasks as there are runs.
func checkTicked(t *testing.T, g *harness.Gitea, caddy *harness.Caddy, repo string, runs []*gitea.ActionWorkflowRun, ticks int) {
	t.Helper()
	for _, run := range runs {
		log := g.SucceededLog(repo, run)
		for i := 1; i <= ticks; i++ {
			if n := strings.Count(log, fmt.Sprintf("tick-%d\n", i)); n != 1 {
				t.Errorf("run %d's log has tick-%d %d times:\n%s", run.ID, i, n, log)
				break
			}
		}
		if n := strings.Count(log, "received task"); n != 1 {
			t.Errorf("run %d's log says %d times that the runner received its task", run.ID, n)
		}
	}
	if n := tasksFinished(caddy, len(runs)); n != len(runs) {
		t.Errorf("the runner finished %d tasks, want the %d jobs once each", n, len(runs))
	}
}

// tasksFinished counts the tasks the runner logged as finished, waiting up
// to 30 s for want of them: Gitea marks a run completed as it takes the
// final report, a moment before the runner logs the task's end.
func tasksFinished(caddy *harness.Caddy, want int) int {
	count := func() int { return strings.Count(caddy.Log(), `"msg":"task finished"`) }
	_ = harness.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		if n := count(); n < want {
			return fmt.Errorf("the runner finished %d tasks", n)
		}
		return nil
	})
	return count()
}

// waitTasksReceived waits until every job of runs says in its log that the
// runner received its task. Gitea counts a task as running once it has
// handed it out in a FetchTask answer; a fault that cuts that answer off
// loses the task until Gitea's zombie task timeout, which no runner can
// help, so the faults begin once the runner holds both tasks.
func waitTasksReceived(t *testing.T, g *harness.Gitea, repo string, runs []*gitea.ActionWorkflowRun) {
	t.Helper()
	err := harness.Eventually(time.Minute, 250*time.Millisecond, func() error {
		for _, run := range runs {
			jobs, _, err := g.Client.ListRepoActionRunJobs(harness.GiteaAdmin, repo, run.ID, gitea.ListRepoActionJobsOptions{})
			if err != nil {
				return err
			}
			for _, job := range jobs.Jobs {
				log, _, err := g.Client.GetRepoActionJobLogs(harness.GiteaAdmin, repo, job.ID)
				if err != nil {
					return err
				}
				if !strings.Contains(string(log), "received task") {
					return fmt.Errorf("job %d of run %d has no log line from the runner yet", job.ID, run.ID)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
