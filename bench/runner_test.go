package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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
// jobs, no cache server.
func startGiteaRunner(b *testing.B, g *harness.Gitea, token, label string, fetchInterval time.Duration) *harness.Process {
	b.Helper()
	bin := giteaRunnerBinary(b)
	dir := b.TempDir()
	config := filepath.Join(dir, "config.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`log:
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
`, dir, fetchInterval, dir)), 0o644)
	harness.MustRun(b, nil, dir, bin, "register", "--no-interactive", "--config", config,
		"--instance", g.URL, "--token", token, "--name", "gitea-runner-bench", "--labels", label)
	cmd := exec.Command(bin, "daemon", "--config", config)
	cmd.Dir = dir
	proc, err := harness.StartProcess("Gitea's runner", cmd, filepath.Join(dir, "runner.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(30 * time.Second) })
	return proc
}

// jobTiming is when a job was seen to start and to succeed, after its commit.
type jobTiming struct{ pickup, done time.Duration }

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
	var t jobTiming
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
			if run.Status != "queued" && t.pickup == 0 {
				t.pickup = time.Since(start)
			}
			if run.Status == "completed" {
				if run.Conclusion != "success" {
					b.Fatalf("%s job %d concluded %s", label, i, run.Conclusion)
				}
				t.done = time.Since(start)
				return t
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Fatalf("%s job %d did not finish", label, i)
	return t
}

// BenchmarkRunnerPickup runs one-step jobs alternately on gitea_runner and
// on Gitea's own runner, both registered with the same Gitea, image and
// fetch interval, and reports commit-to-start and commit-to-success times,
// then both runners' CPU time and memory while idle.
func BenchmarkRunnerPickup(b *testing.B) {
	docker := harness.NewDocker(b)
	image := docker.JobImage()
	g := harness.StartGitea(b, "")
	g.CreateRepo("bench")
	token := g.RepoRegistrationToken("bench")
	interval := 2 * time.Second

	caddy := harness.StartCaddy(b, fmt.Sprintf(`{
	admin {$CADDY_ADMIN}
	gitea_runner {
		instance %s
		registration_token %s
		name gitea-runner-caddy
		labels ours:docker://%s
		fetch_interval %s
		container {
			network host
			docker_host -
		}
	}
}
`, g.URL, token, image, interval), harness.CaddyOptions{NoHTTP: true})
	theirs := startGiteaRunner(b, g, token, "theirs:docker://"+image, interval)
	time.Sleep(5 * time.Second) // both registered and polling

	timings := map[string][]jobTiming{}
	for i := 0; i < envInt("BENCH_JOBS", 10); i++ {
		order := []string{"ours", "theirs"}
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, label := range order {
			timings[label] = append(timings[label], timeJob(b, g, "bench", label, i))
		}
	}
	for _, step := range [][2]string{{"pickup", "commit to job start"}, {"done", "commit to job success"}} {
		what, title := step[0], step[1]
		c := newComparison(fmt.Sprintf("Runner: %s, one-step busybox job, fetch_interval %s", title, interval), "s", "lower",
			"gitea_runner no worse than Gitea's runner")
		c.holds = ratioAtMost("gitea_runner", "Gitea's runner v1.0.8", 1.0)
		c.notes = append(c.notes, "Most of the time is Gitea's: the push, the run's creation and the job's queueing happen before any runner can see the job.")
		for _, label := range []string{"ours", "theirs"} {
			for _, t := range timings[label] {
				v := t.pickup
				if what == "done" {
					v = t.done
				}
				c.add(map[string]string{"ours": "gitea_runner", "theirs": "Gitea's runner v1.0.8"}[label], v.Seconds())
			}
		}
	}
	for _, what := range []string{"pickup", "done"} {
		med := map[string]time.Duration{}
		for label, ts := range timings {
			var ds []time.Duration
			for _, t := range ts {
				if what == "pickup" {
					ds = append(ds, t.pickup)
				} else {
					ds = append(ds, t.done)
				}
			}
			med[label] = median(ds)
			b.Logf("%s %s: median %v, all %v", label, what, med[label], ds)
		}
		b.ReportMetric(med["ours"].Seconds(), "ours-"+what+"-s")
		b.ReportMetric(med["theirs"].Seconds(), "theirs-"+what+"-s")
		b.ReportMetric(med["ours"].Seconds()/med["theirs"].Seconds(), what+"-ours/theirs")
	}

	idle := time.Duration(envInt("BENCH_IDLE_SECONDS", 60)) * time.Second
	pids := map[string]int{"ours": caddy.PID(), "theirs": theirs.PID()}
	cpuCmp := newComparison(fmt.Sprintf("Runner idle for %v: CPU time", idle), "s", "lower", "gitea_runner lower than Gitea's runner")
	cpuCmp.holds = ratioAtMost("gitea_runner", "Gitea's runner v1.0.8", 0.999)
	cpuCmp.notes = append(cpuCmp.notes, "gitea_runner polls every fetch_interval while idle (Gitea's runner backs off to 5 s), trading a few milliseconds of CPU a minute for pickup latency.")
	rssCmp := newComparison("Runner idle: resident memory (VmRSS)", "MiB", "lower", "gitea_runner lower than Gitea's runner")
	rssCmp.holds = ratioAtMost("gitea_runner", "Gitea's runner v1.0.8", 0.999)
	rssCmp.notes = append(rssCmp.notes, "gitea_runner's figure is the whole caddy process, with Caddy's standard modules and the cache handler linked in; most of it is the binary's own pages (RssFile), shared and reclaimable, which the next table leaves out.")
	anonCmp := newComparison("Runner idle: private memory (RssAnon)", "MiB", "lower", "")
	names := map[string]string{"ours": "gitea_runner", "theirs": "Gitea's runner v1.0.8"}
	cpu0 := map[string]float64{}
	for label, pid := range pids {
		cpu0[label] = cpuSeconds(b, pid)
	}
	time.Sleep(idle)
	for _, label := range []string{"ours", "theirs"} {
		pid := pids[label]
		cpu := cpuSeconds(b, pid) - cpu0[label]
		rss := procStatusKiB(b, pid, "VmRSS")
		cpuCmp.add(names[label], cpu)
		rssCmp.add(names[label], float64(rss)/1024)
		anonCmp.add(names[label], float64(procStatusKiB(b, pid, "RssAnon"))/1024)
		b.ReportMetric(cpu, label+"-idle-cpu-s")
		b.ReportMetric(float64(rss)/1024, label+"-rss-MiB")
		b.Logf("%s idle for %v: %.2f s CPU, RSS %d MiB", label, idle, cpu, rss/1024)
	}
}

// cpuSeconds is a process's user plus system CPU time.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}
