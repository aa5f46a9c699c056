package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestReloadSoak reloads caddy again and again, alternating two
// configurations that change the cache's priority, the runner's labels and
// the retention's max_size, while clients read narinfo and NARs, a loop
// uploads closures with nix copy, and jobs run in Docker for Gitea. No
// request fails, no upload fails, every job runs once and succeeds, and
// the process ends with as many goroutines and open files as it had
// before. SOAK_RELOADS sets the reloads (20; `make soak` runs 200).
func TestReloadSoak(t *testing.T) {
	reloads := 20
	if n, err := strconv.Atoi(os.Getenv("SOAK_RELOADS")); err == nil && n > 0 {
		reloads = n
	}
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "soak")
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	root := filepath.Join(t.TempDir(), "cache")
	read := nix.BuildClosure("soak-read", 1<<20)
	if c := nix.Copy("--to", "file://"+root+"?compression=zstd", read.Top); c.Err != nil {
		t.Fatalf("filling the cache:\n%s", c)
	}
	uploads := make([]harness.Closure, 6)
	for i := range uploads {
		uploads[i] = nix.BuildClosure(fmt.Sprintf("soak-upload-%d", i), 256<<10)
	}
	secret, _ := keygen(t, "soak-1")
	config := func(variant int) string {
		labels := "e2e:docker://" + image
		if variant == 1 {
			labels += " soak-extra:host"
		}
		return harness.Caddyfile{
			Runner: &harness.RunnerBlock{
				Instance: g.URL, RegistrationToken: token, Labels: labels,
				Options:   []string{"name soak-runner", "fetch_interval 500ms", "capacity 2"},
				Container: []string{"network host", "docker_host -"},
			},
			Cache: &harness.CacheSite{
				Options: append(harness.CacheOptions(root, secret), fmt.Sprintf("priority %d", 40+variant),
					fmt.Sprintf("retention {\n\tmax_size %dGiB\n\tinterval 1h\n}", 1+variant)),
				Upload: []string{"token " + uploadToken},
			},
		}.String()
	}
	caddy := harness.StartCaddy(t, config(0), harness.CaddyOptions{})
	narinfo := narinfoURL(caddy.URL(), read.Top)
	var nar string
	for line := range strings.Lines(get(t, narinfo, nil, http.StatusOK)) {
		if file, ok := strings.CutPrefix(line, "URL: "); ok {
			nar = caddy.URL() + "/" + strings.TrimSpace(file)
		}
	}

	// The workflow, whose first run warms the runner and its job image;
	// every later push runs it again.
	first := g.CommitWorkflow("soak", "ci.yml", jobWorkflow("soak", "echo job; sleep 2"))
	g.WaitRun("soak", first, 3*time.Minute, harness.Completed)
	baseline := readLoad(t, []string{narinfo, nar}, 10*time.Second, nil)
	// The clients' idle connections would count as caddy's goroutines and
	// files.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	time.Sleep(2 * time.Second)
	before := figuresOf(t, caddy)

	// Reloads, with uploads and jobs going on.
	var uploadFailures []string
	var uploading sync.WaitGroup
	uploading.Go(func() {
		for i, closure := range uploads {
			if c := nix.WithFreshCache().Copy("--to", caddy.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
				uploadFailures = append(uploadFailures, fmt.Sprintf("upload %d:\n%s", i, c))
			}
		}
	})
	var reloadErrs []error
	jobs := 1 // the warm-up run
	during := readLoad(t, []string{narinfo, nar}, 0, func() {
		for i := range reloads {
			if i%max(reloads/4, 1) == 0 {
				g.CommitFile("soak", fmt.Sprintf("push-%d", i), "a push during the reloads\n")
				jobs++
			}
			if err := caddy.Reload(config((i + 1) % 2)); err != nil {
				reloadErrs = append(reloadErrs, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	uploading.Wait()
	if len(reloadErrs) > 0 {
		t.Errorf("%d of %d reloads failed, the first: %v", len(reloadErrs), reloads, reloadErrs[0])
	}
	for _, failure := range uploadFailures {
		t.Errorf("an upload during the reloads failed: %s", failure)
	}

	runs, err := g.Runs("soak")
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.Eventually(5*time.Minute, time.Second, func() error {
		if runs, err = g.Runs("soak"); err != nil {
			return err
		}
		for _, run := range runs {
			if run.Status != "completed" {
				return fmt.Errorf("run %d is %s", run.ID, run.Status)
			}
		}
		if len(runs) != jobs {
			return fmt.Errorf("%d runs, want %d", len(runs), jobs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, run := range runs {
		if run.Conclusion != "success" {
			t.Errorf("run %d concluded %q", run.ID, run.Conclusion)
		}
	}
	if n := tasksFinished(caddy, jobs); n != jobs {
		t.Errorf("the runner finished %d tasks for %d jobs", n, jobs)
	}

	// Old configurations finish stopping.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	time.Sleep(5 * time.Second)
	after := figuresOf(t, caddy)
	for _, load := range []loadFigures{baseline, during} {
		if load.failed > 0 {
			t.Errorf("%d of %d reads failed, the first: %s", load.failed, load.requests, load.firstFailure)
		}
	}
	t.Logf("%d reloads: %d reads without reloads (p99 %v), %d during them (p99 %v), %d sent again after their connection closed, %d failed; goroutines %d → %d, open files %d → %d, RSS %d → %d MiB",
		reloads, baseline.requests, baseline.p99, during.requests, during.p99, baseline.retried+during.retried, baseline.failed+during.failed,
		before.goroutines, after.goroutines, before.files, after.files, before.rss>>20, after.rss>>20)
	if after.goroutines > before.goroutines*105/100+1 {
		t.Errorf("caddy has %d goroutines after %d reloads, %d before:\n%s\nbefore:\n%s", after.goroutines, reloads, before.goroutines, after.profile, before.profile)
	}
	if after.files > before.files*105/100+1 {
		t.Errorf("caddy has %d open files after %d reloads, %d before", after.files, reloads, before.files)
	}
}

// loadFigures are what readLoad measured.
type loadFigures struct {
	// retried counts the requests sent again after their connection
	// closed under them.
	requests, retried, failed int
	firstFailure              string
	p99                       time.Duration
}

// readLoad reads urls in turn from four clients, for d or until during
// returns, and counts what failed (anything but 200 with the whole body,
// after one retry of a request whose connection closed).
func readLoad(t *testing.T, urls []string, d time.Duration, during func()) loadFigures {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var figures loadFigures
	var latencies []time.Duration
	var clients sync.WaitGroup
	for range 4 {
		clients.Go(func() {
			client := &http.Client{Timeout: 30 * time.Second}
			for i := 0; ctx.Err() == nil; i++ {
				url := urls[i%len(urls)]
				start := time.Now()
				failure, retried := "", false
				resp, err := client.Get(url)
				if err != nil {
					// The connection closed under the request, as the
					// old configuration closes its idle keep-alive
					// connections: curl, and so Nix, send it again on a
					// new connection, once.
					retried = true
					resp, err = client.Get(url)
				}
				if err != nil {
					failure = err.Error()
				} else {
					n, err := io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					switch {
					case resp.StatusCode != http.StatusOK:
						failure = url + ": " + resp.Status
					case err != nil || (resp.ContentLength >= 0 && n != resp.ContentLength):
						failure = fmt.Sprintf("%s: %d of %d bytes: %v", url, n, resp.ContentLength, err)
					}
				}
				mu.Lock()
				figures.requests++
				if retried {
					figures.retried++
				}
				latencies = append(latencies, time.Since(start))
				if failure != "" {
					figures.failed++
					if figures.firstFailure == "" {
						figures.firstFailure = failure
					}
				}
				mu.Unlock()
			}
		})
	}
	if during != nil {
		during()
	} else {
		time.Sleep(d)
	}
	cancel()
	clients.Wait()
	slices.Sort(latencies)
	if len(latencies) > 0 {
		figures.p99 = latencies[len(latencies)*99/100]
	}
	return figures
}

// processFigures are counts of a running caddy: its goroutines but those
// of idle keep-alive connections, its open files, its resident memory.
type processFigures struct {
	goroutines, files int
	rss               int64
	// profile is the goroutine profile, by stack.
	profile string
}

func figuresOf(t *testing.T, caddy *harness.Caddy) processFigures {
	t.Helper()
	var f processFigures
	status, body := adminCall(t, caddy, http.MethodGet, "/debug/pprof/goroutine?debug=1")
	if status != http.StatusOK {
		t.Fatalf("goroutine profile: %d", status)
	}
	f.profile = body
	if _, err := fmt.Sscanf(body, "goroutine profile: total %d", &f.goroutines); err != nil {
		t.Fatalf("reading the goroutine profile: %v", err)
	}
	// Idle keep-alive connections come and go with the traffic: pooled
	// client connections (to Gitea, to the Docker daemon), each with a
	// reading and a writing goroutine, and server connections waiting for
	// their next request (the test's own admin calls among them).
	// The first stack follows the profile's header line.
	_, stacks, _ := strings.Cut(body, "\n")
	for _, stack := range strings.Split(stacks, "\n\n") {
		var n int
		idleServer := strings.Contains(stack, "net/http.(*conn).serve") && strings.Contains(stack, "net/http.(*conn).readRequest")
		if _, err := fmt.Sscanf(stack, "%d @", &n); err == nil && (idleServer || strings.Contains(stack, "net/http.(*persistConn)")) {
			f.goroutines -= n
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", caddy.PID()))
	if err != nil {
		t.Fatal(err)
	}
	f.files = len(fds)
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", caddy.PID()))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if kb, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)
			f.rss = n << 10
		}
	}
	return f
}
