package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// seedBuildWorkflow builds a small closure with nix in the job container;
// with push set, it also copies it to the cache the runner hands out.
func seedBuildWorkflow(label string, i int, push bool) string {
	pushStep := ""
	if push {
		pushStep = `      - run: nix copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL" $(nix-build /tmp/c.nix --no-out-link)
`
	}
	return fmt.Sprintf(`on:
  push:
    paths: ['.gitea/workflows/%[1]s-%[2]d.yml']
jobs:
  build:
    runs-on: %[1]s
    defaults:
      run:
        shell: sh
    steps:
      - run: |
          echo 'let mk = n: d: builtins.derivation { name = n; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${n} > $out; for x in ${toString d}; do echo $x >> $out; done; /bin/sleep 2" ]; nonce = "%[1]s-%[2]d-%[3]d"; }; a = mk "a" []; b = mk "b" [ a ]; in mk "c" [ a b ]' > /tmp/c.nix
          nix-build /tmp/c.nix --no-out-link
%[4]s`, label, i, time.Now().UnixNano(), pushStep)
}

// BenchmarkSeedMemory compares the memory of the one-Caddyfile deployment
// (runner and cache in one caddy) with the stack it replaces, Gitea's own
// runner plus nginx serving the same cache directory: at idle, and at the
// peak while each runs the same nix build job.
func BenchmarkSeedMemory(b *testing.B) {
	docker := harness.NewDocker(b)
	image := docker.NixJobImage()
	g, token := harness.StartGiteaWithRepo(b, "seed")
	dir := b.TempDir()
	os.MkdirAll(filepath.Join(dir, "cache"), 0o700)
	harness.Keygen(b, "seed-1", filepath.Join(dir, "cache", "cache.sec"), filepath.Join(dir, "cache", "cache.pub"))
	caddy := harness.StartCaddy(b, harness.RunnerCache(g.URL, token, "ours:docker://"+image, "host", "cache/store", "cache/cache.sec",
		"name caddy-seed").String(), harness.CaddyOptions{Dir: dir})
	theirs := startGiteaRunner(b, g.URL, token, "theirs:docker://"+image, 2*time.Second)
	nginx, _ := startNginx(b, filepath.Join(dir, "cache", "store"), "")
	time.Sleep(10 * time.Second)

	idle := newComparison("Seed deployment memory at idle (VmRSS)", "MiB", "lower", "one caddy below Gitea's runner plus nginx")
	idleAnon := newComparison("Seed deployment private memory at idle (RssAnon)", "MiB", "lower", "")
	peak := newComparison("Seed deployment memory, peak while running the same nix build job", "MiB", "lower", "one caddy below Gitea's runner plus nginx")
	idle.holds = ratioAtMost("caddy (runner + cache)", "Gitea's runner + nginx", 0.999)
	peak.holds = ratioAtMost("caddy (runner + cache)", "Gitea's runner + nginx", 0.999)
	idle.notes = append(idle.notes, "Most of caddy's figure is the binary's own file-backed pages (RssFile: about 22 MiB of code and 25 MiB of read-only data that Go's start-up and package initialisation touch), shared and reclaimable; "+
		"the runner idle tables above show a caddy with no configuration at about the same size. The private-memory table below compares what each stack allocates.")
	peak.notes = append(peak.notes, "The caddy job also pushes its closure to the cache through caddy; Gitea's runner's job only builds (in the seed it pushes to a bind-mounted directory, which costs the runner and nginx nothing). "+
		"Where the memory goes (BENCH_PROFILES, seed-job.heap.pprof): caddy decompresses every NAR as it arrives to check the NarHash its narinfo will claim; an xz NAR of up to 1 MiB is read whole and decoded with a dictionary as large as its blocks (its index says), where nix's default preset asks for 8 MiB.")
	peakAnon := newComparison("Seed deployment private memory (RssAnon), peak while running the same nix build job", "MiB", "lower", "one caddy no higher than Gitea's runner plus nginx")
	peakAnon.holds = ratioAtMost("caddy (runner + cache)", "Gitea's runner + nginx", 1.0)
	peakAnon.notes = append(peakAnon.notes, "Private memory is what each stack allocates for itself, sampled every 200 ms; the binary's file-backed pages, which dominate the table above, are left out.")
	runJob := func(label string, round int) (peakKiB, peakAnonKiB int64) {
		sha := g.CommitWorkflow("seed", fmt.Sprintf("%s-%d.yml", label, round), seedBuildWorkflow(label, round, label == "ours"))
		deadline := time.Now().Add(5 * time.Minute)
		for done := false; !done && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			var rss, anon int64
			if label == "ours" {
				rss, anon = rssTree(b, caddy.PID()), memTree(b, caddy.PID(), "RssAnon")
			} else {
				rss = rssTree(b, theirs.PID()) + rssTree(b, nginx.PID())
				anon = memTree(b, theirs.PID(), "RssAnon") + memTree(b, nginx.PID(), "RssAnon")
			}
			peakKiB, peakAnonKiB = max(peakKiB, rss), max(peakAnonKiB, anon)
			runs, _ := g.Runs("seed")
			for _, r := range runs {
				if r.HeadSha == sha && strings.Contains(r.Path, label+"-") && r.Status == "completed" {
					if r.Conclusion != "success" {
						b.Fatalf("%s job concluded %s", label, r.Conclusion)
					}
					done = true
				}
			}
		}
		return peakKiB, peakAnonKiB
	}
	rounds := envInt("BENCH_ROUNDS", 3)
	for round := range rounds {
		idle.add("caddy (runner + cache)", float64(rssTree(b, caddy.PID()))/1024)
		idle.add("Gitea's runner + nginx", float64(rssTree(b, theirs.PID())+rssTree(b, nginx.PID()))/1024)
		idleAnon.add("caddy (runner + cache)", float64(memTree(b, caddy.PID(), "RssAnon"))/1024)
		idleAnon.add("Gitea's runner + nginx", float64(memTree(b, theirs.PID(), "RssAnon")+memTree(b, nginx.PID(), "RssAnon"))/1024)
		for _, label := range []string{"ours", "theirs"} {
			name := map[string]string{"ours": "caddy (runner + cache)", "theirs": "Gitea's runner + nginx"}[label]
			rss, anon := runJob(label, round)
			peak.add(name, float64(rss)/1024)
			peakAnon.add(name, float64(anon)/1024)
		}
	}
	if profiling() {
		// Allocation (heap) and CPU profiles of caddy over one more job.
		wait := profileCaddy(b, caddy.Admin, "seed-job", 30*time.Second)
		_, _ = runJob("ours", rounds)
		wait()
	}
}

// startNginx serves root as static files over loopback, as the seed's file
// server does, with sendfile and long keep-alive, on the CPUs cpus
// (taskset's list; empty for any); it returns the process and its port.
func startNginx(b *testing.B, root, cpus string) (*harness.Process, int) {
	b.Helper()
	return startNginxWith(b, root, cpus, "", "")
}

// startNginxTLS is startNginx serving HTTPS, with HTTP/2, with the
// certificate and key in files cert and key.
func startNginxTLS(b *testing.B, root, cpus, cert, key string) (*harness.Process, int) {
	b.Helper()
	return startNginxWith(b, root, cpus, " ssl http2", fmt.Sprintf("ssl_certificate %s;\n\t\tssl_certificate_key %s;", cert, key))
}

// startNginxWith is startNginx with more words on its listen line and
// more directives in its server block.
func startNginxWith(b *testing.B, root, cpus, listen, directives string) (*harness.Process, int) {
	b.Helper()
	nginx := harness.LookTool(b, "nginx")
	dir := b.TempDir()
	port := harness.FreePort(b)
	os.MkdirAll(root, 0o755)
	conf := filepath.Join(dir, "nginx.conf")
	// Workers run as root so they can read the benchmark's private
	// temporary directories, as the test's own processes do.
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
user root;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 100000;
	default_type application/octet-stream;
	types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; }
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen 127.0.0.1:%[2]d%[4]s;
		root %[3]s;
		%[5]s
	}
}
`, dir, port, root, listen, directives)), 0o644)
	cmd := exec.Command(nginx, "-c", conf, "-p", dir)
	if cpus != "" {
		cmd = exec.Command(harness.LookTool(b, "taskset"), "-c", cpus, nginx, "-c", conf, "-p", dir)
	}
	proc, err := harness.StartProcess("nginx", cmd, filepath.Join(dir, "nginx.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(10 * time.Second) })
	awaitListening(b, "nginx", port)
	return proc, port
}

// awaitListening waits until what listens on port of the loopback.
func awaitListening(b *testing.B, what string, port int) {
	b.Helper()
	if err := harness.Eventually(10*time.Second, 50*time.Millisecond, func() error {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return err
		}
		return conn.Close()
	}); err != nil {
		b.Fatalf("%s does not answer: %v", what, err)
	}
}
