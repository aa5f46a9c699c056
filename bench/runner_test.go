package bench

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// giteaRunnerBinary is Gitea's own runner, built by `make act-runner`.
func giteaRunnerBinary(b *testing.B) string {
	b.Helper()
	bin := os.Getenv("GITEA_RUNNER_BIN")
	if bin == "" {
		cache, _ := os.UserCacheDir()
		bin = filepath.Join(cache, "cargoxx-runner", "act_runner-v1.0.8")
	}
	if _, err := os.Stat(bin); err != nil {
		harness.Missing(b, "Gitea's runner (run `make act-runner`)", err)
	}
	return bin
}

// startGiteaRunner registers and runs Gitea's runner with the same settings
// as gitea_runner gets: fetch interval, host network, no Docker socket in
// jobs, no cache server. instance is Gitea's address, or a proxy's in front
// of it.
func startGiteaRunner(b *testing.B, instance, token, label string, fetchInterval time.Duration) *harness.Process {
	b.Helper()
	return startGiteaRunnerWith(b, instance, token, label, func(dir string) string {
		return fmt.Sprintf(`log:
  level: info
runner:
  file: %s/.runner
  capacity: 1
  fetch_interval: %s
  fetch_interval_max: 5s
cache:
  enabled: false
container:
  network: host
  docker_host: "-"
  force_pull: false
host:
  workdir_parent: %s/host
`, dir, fetchInterval, dir)
	})
}

// startGiteaRunnerWith registers and runs Gitea's runner with the
// configuration that config writes for its directory.
func startGiteaRunnerWith(b *testing.B, instance, token, label string, config func(dir string) string) *harness.Process {
	b.Helper()
	bin := giteaRunnerBinary(b)
	dir := b.TempDir()
	configFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(configFile, []byte(config(dir)), 0o644); err != nil {
		b.Fatal(err)
	}
	harness.MustRun(b, nil, dir, bin, "register", "--no-interactive", "--config", configFile,
		"--instance", instance, "--token", token, "--name", "gitea-runner-bench", "--labels", label)
	cmd := exec.Command(bin, "daemon", "--config", configFile)
	cmd.Dir = dir
	proc, err := harness.StartProcess("Gitea's runner", cmd, filepath.Join(dir, "runner.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(30 * time.Second) })
	return proc
}

// jobTiming is when, after its commit (at start), a job's run was seen
// created, the job seen started, its first log line written, and the job
// seen to succeed.
type jobTiming struct {
	start                            time.Time
	created, pickup, firstLine, done time.Duration
}

// timeJob commits a one-step workflow for the label and watches the run
// until it succeeds.
func timeJob(b *testing.B, g *harness.Gitea, repo, label string, i int) jobTiming {
	b.Helper()
	file := fmt.Sprintf("%s-%d.yml", label, i)
	// Each push runs every workflow whose paths match, so each workflow
	// runs only for the commit that adds it.
	workflow := fmt.Sprintf("on:\n  push:\n    paths: ['.gitea/workflows/%s']\njobs:\n  j:\n    runs-on: %s\n    steps:\n      - run: echo job %d\n        shell: sh\n", file, label, i)
	start := time.Now()
	sha := g.CommitWorkflow(repo, file, workflow)
	t := jobTiming{start: start}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		runs, err := g.Runs(repo)
		if err != nil {
			b.Fatal(err)
		}
		for _, run := range runs {
			if run.HeadSha != sha || !strings.Contains(run.Path, label+"-") {
				continue
			}
			if t.created == 0 {
				t.created = time.Since(start)
			}
			if run.Status != "queued" && t.pickup == 0 {
				t.pickup = time.Since(start)
			}
			if run.Status == "completed" {
				if run.Conclusion != "success" {
					b.Fatalf("%s job %d concluded %s", label, i, run.Conclusion)
				}
				t.done = time.Since(start)
				t.firstLine = firstLogLine(b, g, repo, run.ID).Sub(start)
				return t
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s job %d did not finish", label, i)
	return t
}

// lastWebhook is when the caddy's runner last received a webhook that woke
// it, by its status.
func lastWebhook(b *testing.B, c *harness.Caddy) time.Time {
	b.Helper()
	resp, err := c.AdminDo(http.MethodGet, "/gitea-runner/status", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Runners []struct {
			LastWebhook *time.Time `json:"last_webhook"`
		} `json:"runners"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || len(st.Runners) != 1 || st.Runners[0].LastWebhook == nil {
		b.Fatalf("the runner's status names no last webhook (%v): %+v", err, st)
	}
	return *st.Runners[0].LastWebhook
}

// firstLogLine is the time stamp of the first line of the log of the one
// job of a run: when the runner wrote it.
func firstLogLine(b *testing.B, g *harness.Gitea, repo string, runID int64) time.Time {
	b.Helper()
	jobs := g.Jobs(repo, runID)
	if len(jobs) != 1 {
		b.Fatalf("run %d has %d jobs, want 1", runID, len(jobs))
	}
	log := g.JobLog(repo, jobs[0].ID)
	stamp, _, _ := strings.Cut(log, " ")
	at, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		b.Fatalf("the log of job %d does not start with a time stamp: %v\n%s", jobs[0].ID, err, log)
	}
	return at
}

// The runners compared, by the label their jobs ask for.
var runnerContenders = []struct{ label, name string }{
	{"ours", "gitea_runner"},
	{"oursmax", "gitea_runner, fetch_interval_max 5s"},
	{"theirs", "Gitea's runner v1.0.8"},
	{"hooked", "gitea_runner with webhooks"},
}

// startCaddyRunner runs a caddy whose only app is a gitea_runner for label,
// with more options for it; instance is Gitea's address, or a proxy's in
// front of it.
func startCaddyRunner(b *testing.B, instance, token, label, image string, interval time.Duration, options ...string) *harness.Caddy {
	b.Helper()
	options = append([]string{"name gitea-runner-" + label, fmt.Sprintf("fetch_interval %s", interval)}, options...)
	return harness.StartCaddy(b, harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: instance, RegistrationToken: token, Labels: label + ":docker://" + image,
		Options: options, Container: []string{"network host", "docker_host -"},
	}}.String(), harness.CaddyOptions{NoHTTP: true})
}

// startHookedCaddyRunner runs a caddy whose gitea_runner for label makes
// its own webhook in the repository with the administrator's token and
// serves it, polling only at the webhook's default interval.
func startHookedCaddyRunner(b *testing.B, g *harness.Gitea, instance, repo, label, image string, interval time.Duration) *harness.Caddy {
	b.Helper()
	secret := filepath.Join(b.TempDir(), "webhook.secret")
	if err := os.WriteFile(secret, []byte("bench webhook secret"), 0o600); err != nil {
		b.Fatal(err)
	}
	c := harness.StartCaddy(b, harness.Caddyfile{
		Runner: &harness.RunnerBlock{
			Instance: instance, Labels: label + ":docker://" + image,
			Options: []string{"name gitea-runner-" + label, fmt.Sprintf("fetch_interval %s", interval),
				"api_token " + g.Token, "scope repo " + harness.GiteaAdmin + "/" + repo,
				"webhook {\n\tsecret_file " + secret + "\n\turl " + harness.WebhookURL + "\n}"},
			Container: []string{"network host", "docker_host -"},
		},
		Sites: []string{harness.WebhookSite},
	}.String(), harness.CaddyOptions{})
	if err := harness.Eventually(time.Minute, 200*time.Millisecond, func() error {
		hooks, _, err := g.Client.ListRepoHooks(harness.GiteaAdmin, repo, gitea.ListHooksOptions{})
		if err == nil && len(hooks) != 1 {
			err = fmt.Errorf("%d webhooks", len(hooks))
		}
		return err
	}); err != nil {
		b.Fatalf("the runner with webhooks made no webhook in %s: %v", repo, err)
	}
	return c
}

// BenchmarkRunnerPickup runs one-step jobs in turn on gitea_runner (as
// configured by default, backing off while idle like Gitea's runner, and
// woken by Gitea's webhooks) and on Gitea's own runner, all registered
// with the same Gitea, image and fetch interval, and reports
// commit-to-start and commit-to-success times, then each runner's CPU
// time, memory and FetchTask calls while idle. Each runner reaches Gitea
// through a proxy of its own that counts its calls.
func BenchmarkRunnerPickup(b *testing.B) {
	docker := harness.NewDocker(b)
	image := docker.JobImage()
	g := harness.StartGitea(b, harness.WebhookINI)
	g.CreateRepo("bench")
	token := g.RepoRegistrationToken("bench")
	interval := 2 * time.Second
	// Gitea's runner's own default for fetch_interval_max.
	theirMax := 5 * time.Second

	counters := map[string]*harness.RPCCounter{}
	for _, r := range runnerContenders {
		counters[r.label] = harness.StartRPCCounter(b, g.URL)
	}
	ours := startCaddyRunner(b, counters["ours"].URL, token, "ours", image, interval)
	oursMax := startCaddyRunner(b, counters["oursmax"].URL, token, "oursmax", image, interval, fmt.Sprintf("fetch_interval_max %s", theirMax))
	theirs := startGiteaRunner(b, counters["theirs"].URL, token, "theirs:docker://"+image, interval)
	hooked := startHookedCaddyRunner(b, g, counters["hooked"].URL, "bench", "hooked", image, interval)
	bare := harness.StartCaddy(b, harness.Caddyfile{}.String(), harness.CaddyOptions{NoHTTP: true})
	pids := map[string]int{"ours": ours.PID(), "oursmax": oursMax.PID(), "theirs": theirs.PID(), "hooked": hooked.PID()}
	time.Sleep(5 * time.Second) // all registered and polling

	pickup := newComparison(fmt.Sprintf("Runner: commit to job start, one-step busybox job, fetch_interval %s", interval), "s", "lower",
		"gitea_runner no worse than Gitea's runner")
	done := newComparison(fmt.Sprintf("Runner: commit to job success, one-step busybox job, fetch_interval %s", interval), "s", "lower",
		"gitea_runner no worse than Gitea's runner")
	for _, c := range []*comparison{pickup, done} {
		c.holds = ratioAtMost("gitea_runner", "Gitea's runner v1.0.8", 1.0)
		c.notes = append(c.notes, "Most of the time is Gitea's: the push, the run's creation and the job's queueing happen before any runner can see the job. "+
			"Between jobs each runner sits idle while the others run theirs, so a runner that backs off while idle (Gitea's runner, and gitea_runner with fetch_interval_max 5s) meets most jobs at a 5 s interval rather than 2 s.")
	}
	// The same time, decomposed. Gitea keeps its run and job times in
	// whole seconds, so the run's creation is taken from the API, looked
	// at every 50 ms, and the first log line from its time stamp, which the
	// runner writes.
	const decomposed = "The commit is when the benchmark starts pushing it; the run is seen created and the job started through Gitea's API, looked at every 50 ms (Gitea records both in whole seconds); the first log line's time is its time stamp, which the runner writes."
	giteaPart := newComparison("Runner pickup, Gitea's part: commit to run created", "s", "lower", "")
	giteaPart.notes = append(giteaPart.notes, decomposed+" No runner takes part: every contender waits the same.")
	const hookedGoal = 200 * time.Millisecond
	polledGoal := interval/2 + 300*time.Millisecond
	runnerGoal := fmt.Sprintf("gitea_runner at most %s (half the fetch interval plus 0.3 s)", polledGoal)
	runnerStart := newComparison(fmt.Sprintf("Runner pickup, the runner's part: run created to job started, fetch_interval %s", interval), "s", "lower", runnerGoal)
	runnerLine := newComparison(fmt.Sprintf("Runner pickup, the runner's part: run created to the job's first log line, fetch_interval %s", interval), "s", "lower", runnerGoal)
	for _, c := range []*comparison{runnerStart, runnerLine} {
		c.holds = func(m map[string]float64) bool { return m["gitea_runner"] <= polledGoal.Seconds() }
		c.addGoal(fmt.Sprintf("gitea_runner with webhooks at most %s", hookedGoal),
			func(m map[string]float64) bool { return m["gitea_runner with webhooks"] <= hookedGoal.Seconds() })
		c.notes = append(c.notes, decomposed+" A runner polling every fetch_interval finds a new job after half of it on average; the rest is the runner's own. "+
			"The runner with webhooks is told by Gitea as the job is queued: its part is Gitea's delivery, one FetchTask and the job's start (decomposed under \"Runner pickup with webhooks, decomposed\"). "+
			"The job started is seen through the API every 50 ms, which adds half that on average to every contender; the first log line does not wait for it.")
	}
	hookedParts := newComparison("Runner pickup with webhooks, decomposed: run created to webhook received to first log line", "s", "lower", "")
	hookedParts.notes = append(hookedParts.notes, "The webhook's arrival is the runner's own record of it (last_webhook in its status). "+
		"Gitea posts workflow_job after it has inserted the run, made the commit statuses and stored the webhook's delivery; the runner then makes one FetchTask, "+
		"in which Gitea assigns the task, and writes the job's first log line as the task starts.")
	for i := 0; i < envInt("BENCH_JOBS", 10); i++ {
		order := slices.Clone(runnerContenders)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, r := range order {
			t := timeJob(b, g, "bench", r.label, i)
			pickup.add(r.name, t.pickup.Seconds())
			done.add(r.name, t.done.Seconds())
			giteaPart.add(r.name, t.created.Seconds())
			runnerStart.add(r.name, (t.pickup - t.created).Seconds())
			runnerLine.add(r.name, (t.firstLine - t.created).Seconds())
			if r.label == "hooked" {
				received := lastWebhook(b, hooked).Sub(t.start)
				hookedParts.add("Gitea: run created to webhook received", (received - t.created).Seconds())
				hookedParts.add("the runner: webhook received to first log line", (t.firstLine - received).Seconds())
			}
		}
	}

	idle := time.Duration(envInt("BENCH_IDLE_SECONDS", 60)) * time.Second
	cpuCmp := newComparison(fmt.Sprintf("Runner idle for %v: CPU time", idle), "s", "lower",
		"gitea_runner with fetch_interval_max 5s no higher than Gitea's runner")
	cpuCmp.holds = ratioAtMost("gitea_runner, fetch_interval_max 5s", "Gitea's runner v1.0.8", 1.0)
	cpuCmp.addGoal("gitea_runner with webhooks at most half of Gitea's runner", ratioAtMost("gitea_runner with webhooks", "Gitea's runner v1.0.8", 0.5))
	fetchCmp := newComparison("Runner idle: FetchTask calls per hour, counted by a proxy in front of Gitea", "calls/h", "lower",
		"gitea_runner with webhooks at most a tenth of Gitea's runner")
	fetchCmp.holds = ratioAtMost("gitea_runner with webhooks", "Gitea's runner v1.0.8", 0.1)
	fetchCmp.notes = append(fetchCmp.notes, "Each FetchTask costs Gitea a database update of the runner's last contact, and a query for a job when the tasks version moved. "+
		"With webhooks, polling is only the safety net for a lost webhook, at the webhook's poll_interval (default 1m).")
	cpuCmp.notes = append(cpuCmp.notes, "An idle runner's CPU time is its polls, each a FetchTask call whose cost is mostly Go's HTTP client and scheduler waking up (see runner-idle.cpu.pprof with BENCH_PROFILES). "+
		"gitea_runner polls every fetch_interval while idle, Gitea's runner backs off to 5 s; with fetch_interval_max 5s gitea_runner polls as often as Gitea's runner, and the row above shows what it then costs.")
	rssCmp := newComparison("Runner idle: resident memory (VmRSS)", "MiB", "lower", "gitea_runner lower than Gitea's runner")
	rssCmp.holds = ratioAtMost("gitea_runner", "Gitea's runner v1.0.8", 0.999)
	rssCmp.notes = append(rssCmp.notes, "gitea_runner's figure is the whole caddy process, with Caddy's standard modules and the cache handler linked in; most of it is the binary's own pages (RssFile), shared and reclaimable, which the next table leaves out.")
	anonCmp := newComparison("Runner idle: private memory (RssAnon)", "MiB", "lower", "")
	// Every runner idles at once; each window is one sample of each. The
	// webhook runner polls about once a minute, so its FetchTask calls are
	// counted over all the windows together.
	fetches0 := map[string]int{}
	for label, counter := range counters {
		fetches0[label] = counter.Count("FetchTask")
	}
	idleStart := time.Now()
	for range envInt("BENCH_IDLE_ROUNDS", 5) {
		cpu0 := map[string]float64{}
		for label, pid := range pids {
			cpu0[label] = cpuSeconds(b, pid)
		}
		time.Sleep(idle)
		for _, r := range runnerContenders {
			pid := pids[r.label]
			cpu := cpuSeconds(b, pid) - cpu0[r.label]
			rss := procStatusKiB(b, pid, "VmRSS")
			cpuCmp.add(r.name, cpu)
			rssCmp.add(r.name, float64(rss)/1024)
			anonCmp.add(r.name, float64(procStatusKiB(b, pid, "RssAnon"))/1024)
			b.Logf("%s idle for %v: %.3f s CPU, RSS %d MiB", r.name, idle, cpu, rss/1024)
		}
	}
	idled := time.Since(idleStart)
	for _, r := range runnerContenders {
		fetchCmp.add(r.name, float64(counters[r.label].Count("FetchTask")-fetches0[r.label])*float64(time.Hour)/float64(idled))
	}
	// What Caddy itself holds, for scale: the same binary with no apps.
	const bareName = "caddy, no configuration (for scale)"
	rssCmp.add(bareName, float64(procStatusKiB(b, bare.PID(), "VmRSS"))/1024)
	anonCmp.add(bareName, float64(procStatusKiB(b, bare.PID(), "RssAnon"))/1024)
	// Profiling costs CPU itself, so it gets a window of its own.
	profileCaddy(b, ours.Admin, "runner-idle", idle)()
}
