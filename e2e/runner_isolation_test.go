package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// isolationCaddyfile runs a runner with a container label on the host
// network and a host label, handing jobs the cache, with the admin endpoint
// on a unix socket.
func isolationCaddyfile(g *harness.Gitea, token, image, root, secret string) string {
	return harness.RunnerCache(g.URL, token, "e2e:docker://"+image+" metal:host", "host", root, secret, "fetch_interval 500ms").String()
}

// probeWorkflow has a job in a container and a job on the host each look
// for Caddy's admin endpoint and list what they were given; the host job
// also asks the cache for a path, which Nix remembers in its narinfo
// cache.
const probeWorkflow = `on: [push]
jobs:
  container:
    runs-on: e2e
    defaults:
      run:
        shell: sh
    steps:
      - run: |
          wget -q -T 3 -O- http://127.0.0.1:2019/config/ && echo "ADMIN TCP REACHED" || echo "admin tcp: unreachable"
          test -e "ADMIN_SOCKET" && echo "ADMIN SOCKET VISIBLE" || echo "admin socket: absent"
          test -e "$(dirname ADMIN_SOCKET)" && echo "ADMIN SOCKET DIRECTORY VISIBLE" || echo "admin socket directory: absent"
          sed 's/^/mount: /' /proc/mounts
          env | sed 's/^/env: /'
  host:
    runs-on: metal
    defaults:
      run:
        shell: sh
    steps:
      - run: |
          env | sed 's/^/env: /'
          nix --extra-experimental-features nix-command path-info --store "$CARGOXX_NIX_CACHE_URL" /nix/store/00000000000000000000000000000000-absent >/dev/null 2>&1 || true
          test -s "$XDG_CACHE_HOME/nix/binary-cache-v6.sqlite" && echo "NARINFO CACHE IN $XDG_CACHE_HOME"
`

// TestJobsCannotReachCaddy runs jobs the way the README's deployment does,
// with the admin endpoint on a unix socket: neither a container on the host
// network nor a job on the host reaches the admin API through the network,
// containers see none of Caddy's files, and no job inherits the secrets in
// Caddy's environment. The admin API itself keeps working over the socket.
func TestJobsCannotReachCaddy(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g, registrationToken := harness.StartGiteaWithRepo(t, "pkgs")
	root := filepath.Join(t.TempDir(), "cache")
	secret, _ := keygen(t, "isolation-1")
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	uploadToken := "caddy-env-token-" + hex.EncodeToString(nonce)
	config := isolationCaddyfile(g, registrationToken, image, root, secret)
	// A secret in Caddy's environment, as a Caddyfile's {env.*} tokens are.
	home := t.TempDir()
	caddy := harness.StartCaddy(t, config, harness.CaddyOptions{Env: []string{"CARGOXX_E2E_UPLOAD_TOKEN=" + uploadToken, "HOME=" + home}})
	socket := strings.TrimPrefix(caddy.Admin, "unix/")

	sha := g.CommitWorkflow("pkgs", "probe.yml", strings.ReplaceAll(probeWorkflow, "ADMIN_SOCKET", socket))
	run := g.WaitRun("pkgs", sha, 3*time.Minute, harness.Completed)
	if run.Conclusion != "success" {
		t.Fatalf("the probe run concluded %s", run.Conclusion)
	}
	logs := map[string]string{}
	for _, job := range g.Jobs("pkgs", run.ID) {
		logs[job.Name] = g.JobLog("pkgs", job.ID)
	}
	containerLog, hostLog := logs["container"], logs["host"]
	if containerLog == "" || hostLog == "" {
		t.Fatalf("want logs of jobs container and host, got %v", logs)
	}
	for _, want := range []string{"admin tcp: unreachable", "admin socket: absent", "admin socket directory: absent", "mount: "} {
		if !strings.Contains(containerLog, want) {
			t.Errorf("the container job's log lacks %q:\n%s", want, containerLog)
		}
	}
	// Nothing of Caddy's in the container's mounts: its directory, data,
	// cache, keys, admin socket or the Docker socket.
	for _, line := range strings.Split(containerLog, "\n") {
		_, mount, ok := strings.Cut(line, "mount: ")
		if !ok {
			continue
		}
		for _, forbidden := range []string{caddy.Dir, root, secret, filepath.Dir(socket), "docker.sock", "xdg-data"} {
			if strings.Contains(mount, forbidden) {
				t.Errorf("the container job has %s mounted: %s", forbidden, mount)
			}
		}
	}
	// The cache credential reaches the job, and nothing else of Caddy's.
	if !strings.Contains(containerLog, "/run/cargoxx/nix-cache.netrc") {
		t.Errorf("the container job has no cache credential mounted:\n%s", containerLog)
	}
	if strings.Contains(containerLog, caddy.Dir) {
		t.Errorf("the container job sees Caddy's directory %s:\n%s", caddy.Dir, containerLog)
	}
	// A host job works in Caddy's data directory with Caddy's rights (host
	// labels are for trusted code), but even there it inherits none of the
	// secrets in Caddy's environment.
	for name, log := range logs {
		for _, forbidden := range []string{uploadToken, secret, "CADDY_ADMIN=unix"} {
			if strings.Contains(log, forbidden) {
				t.Errorf("the %s job sees %q:\n%s", name, forbidden, log)
			}
		}
	}

	// Nix on the host kept what it looked up in a cache directory of the
	// job's own, gone with the job, not in the HOME that host jobs share.
	m := regexp.MustCompile(`NARINFO CACHE IN (\S+)`).FindStringSubmatch(hostLog)
	if m == nil {
		t.Errorf("the host job's Nix kept no narinfo cache in its XDG_CACHE_HOME:\n%s", hostLog)
	} else if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("the host job's cache directory %s outlived the job: %v", m[1], err)
	}
	if _, err := os.Stat(filepath.Join(home, ".cache", "nix")); !os.IsNotExist(err) {
		t.Errorf("a job's Nix wrote into the shared %s/.cache/nix: %v", home, err)
	}

	// The admin API answers over its socket: the runner's status, and a
	// reload with the caddy command.
	if status := adminGet(t, caddy, "/gitea-runner/status"); !strings.Contains(status, `"id":`) {
		t.Errorf("runner status over the admin socket: %s", status)
	}
	reloaded := strings.Replace(config, "fetch_interval 500ms", "fetch_interval 600ms", 1)
	if err := os.WriteFile(caddy.Config, []byte(reloaded), 0o644); err != nil {
		t.Fatal(err)
	}
	harness.MustRun(t, []string{"CARGOXX_E2E_UPLOAD_TOKEN=" + uploadToken, "CADDY_HTTP_PORT=" + fmt.Sprint(caddy.HTTPPort), "CADDY_ADMIN=" + caddy.Admin},
		caddy.Dir, harness.CaddyBinary(t, "caddy"), "reload", "--config", caddy.Config, "--adapter", "caddyfile", "--address", caddy.Admin)
	if cfg := adminGet(t, caddy, "/config/apps/gitea_runner/fetch_interval"); strings.TrimSpace(cfg) != "600000000" {
		t.Errorf("after caddy reload over the socket, fetch_interval is %s", cfg)
	}
}

// TestForkPullRequestNeverRunsOnTheHost opens a pull request from a fork
// whose job asks for the host label: it fails with the reason in its log,
// while the same workflow pushed to the repository runs.
func TestForkPullRequestNeverRunsOnTheHost(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "pkgs")
	root := filepath.Join(t.TempDir(), "cache")
	secret, _ := keygen(t, "isolation-2")
	harness.StartCaddy(t, isolationCaddyfile(g, token, image, root, secret), harness.CaddyOptions{})
	workflow := func(event string) string {
		return `on: [` + event + `]
jobs:
  build:
    runs-on: metal
    defaults:
      run:
        shell: sh
    steps:
      - run: echo "ran on the host"
`
	}
	push := g.WaitRun("pkgs", g.CommitWorkflow("pkgs", "push.yml", workflow("push")), 3*time.Minute, harness.Completed)
	if push.Conclusion != "success" {
		t.Fatalf("the push run on the host label concluded %s", push.Conclusion)
	}
	if log := g.JobLog("pkgs", g.Jobs("pkgs", push.ID)[0].ID); !strings.Contains(log, "ran on the host") {
		t.Fatalf("the push job did not run:\n%s", log)
	}

	fork := g.WaitRun("pkgs", g.OpenForkPullRequest("pkgs", "contributor", "pull-request.yml", workflow("pull_request")), 3*time.Minute, harness.Completed)
	log := g.JobLog("pkgs", g.Jobs("pkgs", fork.ID)[0].ID)
	if fork.Conclusion != "failure" {
		t.Fatalf("the fork's run on the host label concluded %s, want failure:\n%s", fork.Conclusion, log)
	}
	if strings.Contains(log, "ran on the host") || !strings.Contains(log, "pull request from a fork") || !strings.Contains(log, "host label") {
		t.Fatalf("the fork's job log should give the reason and show no step ran:\n%s", log)
	}
}

// TestRunnerRefusesReachableAdminEndpoint starts caddy with the admin API on
// a TCP port while jobs use the host network: it refuses, naming the fix,
// and starts once the configuration says every job is trusted.
func TestRunnerRefusesReachableAdminEndpoint(t *testing.T) {
	config := harness.Caddyfile{Runner: &harness.RunnerBlock{
		Instance: fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t)), RegistrationToken: "unused-while-gitea-is-down",
		Labels: "e2e:docker://busybox", Container: []string{"network host"},
	}}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(config.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	c := harness.Run([]string{"CADDY_ADMIN=127.0.0.1:" + fmt.Sprint(harness.FreePort(t)), "XDG_DATA_HOME=" + t.TempDir()}, "",
		harness.CaddyBinary(t, "caddy"), "run", "--config", file, "--adapter", "caddyfile")
	for _, want := range []string{"job containers on the host network reach the admin endpoint", "admin unix//", "trusted_jobs"} {
		if c.Err == nil || !strings.Contains(c.Output, want) {
			t.Fatalf("caddy should refuse to start, saying %q:\n%s", want, c)
		}
	}

	config.Runner.Options = []string{"trusted_jobs"}
	trusted := harness.StartCaddy(t, config.String(), harness.CaddyOptions{NoHTTP: true, TCPAdmin: true})
	resp, err := http.Get(trusted.AdminURL("/gitea-runner/status"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with trusted_jobs the runner's status answers %s", resp.Status)
	}
}
