package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// deployWorkflow is the seed's workflow shortened to its build step, as the
// migration guide leaves it, with a first step that looks for Caddy's admin
// socket anywhere in the job's container.
var deployWorkflow = `on: [push]
jobs:
  build:
    runs-on: self-hosted
    steps:
      - name: the admin socket is out of reach
        run: |
          found=$(find / \( -path /proc -o -path /sys \) -prune -o -type s -name 'admin.sock' -print 2>/dev/null || true)
          if [ -n "$found" ]; then echo "the job sees Caddy's admin socket: $found"; exit 1; fi
          echo "no admin socket in the job"
      - name: build
        run: |
` + closureScript("NONCE", "  a = mk \"deploy-a\" [];\n  b = mk \"deploy-b\" [ a ];\nin mk \"deploy-c\" [ a b ]") + `
          # The job image keeps cache.nixos.org; tests reach only loopback.
          echo "built-path $(nix-build /tmp/closure.nix --no-out-link --option substituters '')"
`

// loopbackProductionCaddyfile is caddyfiles/production.Caddyfile as a test
// on loopback can serve it: the cache's site over plain HTTP at
// CACHE_DOMAIN (a loopback host:port, so no certificate is asked for),
// listening on loopback only, and jobs on the host network to reach it.
// Everything else, the paths included, is the file as shipped.
func loopbackProductionCaddyfile(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "caddyfiles", "production.Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	config := string(data)
	for _, r := range []struct{ old, new string }{
		{"url https://{$CACHE_DOMAIN}", "url http://{$CACHE_DOMAIN}"},
		{"\n{$CACHE_DOMAIN} {", "\nhttp://{$CACHE_DOMAIN} {"},
		{"\tadmin {$CADDY_ADMIN", "\tdefault_bind 127.0.0.1\n\tadmin {$CADDY_ADMIN"},
		{"\t\t\tdocker_host -\n", "\t\t\tdocker_host -\n\t\t\tnetwork host\n"},
	} {
		if !strings.Contains(config, r.old) {
			t.Fatalf("production.Caddyfile no longer contains %q; adapt the test's loopback version of it", r.old)
		}
		config = strings.ReplaceAll(config, r.old, r.new)
	}
	return config
}

// deployedJobPushes commits deployWorkflow to repo, waits for the job to
// succeed, and has a fresh Nix substitute the closure it built from
// cacheURL, trusting only publicKey. It returns the job's log and the
// runner Gitea says ran it.
func deployedJobPushes(t *testing.T, g *harness.Gitea, repo, cacheURL, publicKey string) (log string, runnerName string) {
	t.Helper()
	workflow := strings.ReplaceAll(deployWorkflow, "NONCE", fmt.Sprint(time.Now().UnixNano()))
	sha := g.CommitWorkflow(repo, "build.yml", workflow)
	run := g.WaitRun(repo, sha, 5*time.Minute, harness.Completed)
	job := g.Jobs(repo, run.ID)[0]
	log = g.JobLog(repo, job.ID)
	if run.Conclusion != "success" {
		t.Fatalf("the build job concluded %q:\n%s", run.Conclusion, log)
	}
	if !strings.Contains(log, "no admin socket in the job") {
		t.Fatalf("the job's log does not show the admin socket check:\n%s", log)
	}
	// Unprivileged, or in a container of its own, the runner still has
	// the job's store watched from inside the job's container: the job
	// gets no last step that runs nix copy.
	if !regexp.MustCompile(`auto push to \S+: 3 built paths; pushed 3 paths`).MatchString(log) || strings.Contains(log, "this job's Nix built to") {
		t.Fatalf("the job's store was not watched by the auto-push agent:\n%s", log)
	}
	m := regexp.MustCompile(`built-path (/nix/store/\S+-deploy-c)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("the job's log does not name the built path:\n%s", log)
	}
	nix := harness.NewNix(t, "")
	c, store := substitute(nix, cacheURL, publicKey, m[1])
	if c.Err != nil {
		t.Fatalf("substituting what the job built, trusting only the cache's key:\n%s", c)
	}
	if paths := nix.StorePaths(store); len(paths) != 3 || !slices.Contains(paths, m[1]) {
		t.Fatalf("the consumer's store holds %v, want the 3-path closure of %s", paths, m[1])
	}
	return log, job.RunnerName
}

// getBody GETs url and returns the status and body.
func getBody(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// waitServing waits until url answers 200.
func waitServing(t *testing.T, url string, alive func() error) {
	t.Helper()
	if err := harness.Eventually(2*time.Minute, 250*time.Millisecond, func() error {
		if alive != nil {
			if err := alive(); err != nil {
				return err
			}
		}
		status, body, err := getBody(url)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("GET %s: %d %s", url, status, body)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// reloadedSite is a site a test appends to a deployed Caddyfile, to see a
// reload take effect.
func reloadedSite(port int) string {
	return fmt.Sprintf("\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n\trespond \"reloaded\"\n}\n", port)
}

// TestComposeDeployment deploys the way the seed's users do: the seed's
// directory with its .env, an act_runner registration in data/.runner and
// the cache in cache/, with `make image`, `make job-image` and the
// repository's compose file run by docker-compose.
func TestComposeDeployment(t *testing.T) {
	docker := harness.NewDocker(t)
	compose := harness.LookTool(t, "docker-compose")
	actRunner := os.Getenv("GITEA_RUNNER_BIN")
	if _, err := os.Stat(actRunner); actRunner == "" || err != nil {
		harness.Missing(t, "Gitea's act_runner (GITEA_RUNNER_BIN; `make act-runner` builds it)", err)
	}
	root := harness.RepoRoot(t)
	g, registrationToken := harness.StartGiteaWithRepo(t, "pkgs")

	harness.MustRun(t, nil, root, "make", "--no-print-directory", "image")
	harness.MustRun(t, nil, root, "make", "--no-print-directory", "job-image")
	version := strings.TrimSpace(harness.MustRun(t, nil, root, "git", "describe", "--tags", "--always", "--dirty"))
	if label := strings.TrimSpace(docker.Must("image", "inspect", "--format",
		`{{index .Config.Labels "org.opencontainers.image.version"}} {{.Config.User}}`, "cargoxx-runner:latest")); label != version+" 10001:10001" {
		t.Fatalf("cargoxx-runner:latest has version label and user %q, want %q", label, version+" 10001:10001")
	}

	// The seed's directory: act_runner registered it, the cache has its key.
	dir := filepath.Join(t.TempDir(), "cargoxx-pkgs")
	for _, sub := range []string{"data", "cache"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const runnerName = "cargoxx-pkgs-runner"
	const labels = "self-hosted:docker://cargoxx-runner-job:latest"
	harness.MustRun(t, nil, filepath.Join(dir, "data"), actRunner, "register", "--no-interactive",
		"--instance", g.URL, "--token", registrationToken, "--name", runnerName, "--labels", labels)
	registered := g.RepoRunners("pkgs")
	if len(registered) != 1 {
		t.Fatalf("after act_runner register, gitea lists %d runners, want 1", len(registered))
	}
	publicKeyFile := filepath.Join(dir, "cache", "cache.pub")
	publicKey := harness.Keygen(t, "cache.example.org-1", filepath.Join(dir, "cache", "cache.sec"), publicKeyFile)

	port, httpsPort, reloadPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	var dockerSocket syscall.Stat_t
	if err := syscall.Stat("/var/run/docker.sock", &dockerSocket); err != nil {
		t.Fatalf("the compose file mounts /var/run/docker.sock: %v", err)
	}
	env := strings.Join([]string{
		"GITEA_INSTANCE_URL=" + g.URL,
		"GITEA_RUNNER_REGISTRATION_TOKEN=" + registrationToken,
		"GITEA_RUNNER_NAME=" + runnerName,
		"GITEA_RUNNER_LABELS=" + labels,
		"CADDY_HTTP_PORT=" + strconv.Itoa(port),
		"CADDY_HTTPS_PORT=" + strconv.Itoa(httpsPort),
		"CACHE_DOMAIN=127.0.0.1:" + strconv.Itoa(port),
		"ACME_EMAIL=ops@example.org",
		"DOCKER_GID=" + strconv.Itoa(int(dockerSocket.Gid)),
	}, "\n") + "\n"
	caddyfile := loopbackProductionCaddyfile(t)
	composeFile, err := os.ReadFile(filepath.Join(root, "deploy", "compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{".env": env, "Caddyfile": caddyfile, "compose.yml": string(composeFile)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	harness.MustRun(t, nil, dir, "chown", "-R", "10001:10001", "data", "cache")

	project := fmt.Sprintf("cargoxx-e2e-%d", time.Now().UnixNano())
	composeEnv := []string{"PWD=" + dir, "COMPOSE_PROJECT_NAME=" + project}
	run := func(args ...string) harness.Command { return harness.Run(composeEnv, dir, compose, args...) }
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("docker-compose logs:\n%s", run("logs", "--no-color").Output)
		}
		if c := run("down", "--volumes"); c.Err != nil {
			t.Errorf("docker-compose down:\n%s", c)
		}
	})
	if c := run("up", "-d"); c.Err != nil {
		t.Fatalf("docker-compose up -d:\n%s", c)
	}
	cacheURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitServing(t, cacheURL+"/nix-cache-info", nil)

	// It runs as the image's user, not root.
	pid := strings.TrimSpace(docker.Must("inspect", "--format", "{{.State.Pid}}", project+"_runner_1"))
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if uid := regexp.MustCompile(`(?m)^Uid:\s+(\d+)`).FindStringSubmatch(string(status)); uid == nil || uid[1] != "10001" {
		t.Fatalf("the runner's process has %v, want uid 10001", uid)
	}

	_, jobRunner := deployedJobPushes(t, g, "pkgs", cacheURL, publicKey)
	if jobRunner != runnerName {
		t.Errorf("the job ran on runner %q, want the registered %q", jobRunner, runnerName)
	}
	if runners := g.RepoRunners("pkgs"); len(runners) != 1 || runners[0].ID != registered[0].ID {
		t.Fatalf("gitea lists runners %+v, want only act_runner's registration (id %d)", runners, registered[0].ID)
	}
	verifyClean(t, filepath.Join(dir, "cache", "store"), publicKeyFile)

	// `docker compose logs` shows the runner at work.
	if logs := run("logs", "--no-color", "runner"); logs.Err != nil || !strings.Contains(logs.Output, "gitea_runner") {
		t.Fatalf("docker-compose logs shows no runner:\n%s", logs)
	}

	// `caddy reload` through the admin socket in its volume.
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(caddyfile+reloadedSite(reloadPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := run("exec", "-T", "runner", "caddy", "reload", "--config", "/etc/caddy/Caddyfile"); c.Err != nil {
		t.Fatalf("caddy reload in the container:\n%s", c)
	}
	if status, body, err := getBody(fmt.Sprintf("http://127.0.0.1:%d/", reloadPort)); err != nil || body != "reloaded" {
		t.Fatalf("after the reload, the new site answers %d %q, %v", status, body, err)
	}
	if status, _, err := getBody(cacheURL + "/nix-cache-info"); err != nil || status != http.StatusOK {
		t.Fatalf("after the reload, the cache answers %d, %v", status, err)
	}
}
