package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// captureServer records what jobs POST to it, so a test can learn a job's
// credential without the job printing it.
type captureServer struct {
	mu     sync.Mutex
	bodies []string
	url    string
}

func startCaptureServer(t *testing.T) *captureServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &captureServer{url: "http://" + l.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		c.bodies = append(c.bodies, string(body))
		c.mu.Unlock()
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return c
}

func (c *captureServer) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.bodies) == 0 {
		return ""
	}
	return c.bodies[len(c.bodies)-1]
}

var seedWorkflow = `on: [push]
jobs:
  build:
    runs-on: self-hosted
    defaults:
      run:
        shell: sh
    steps:
      - name: build a closure with nix
        run: |
` + closureScript("NONCE", "  a = mk \"seed-a\" [];\n  b = mk \"seed-b\" [ a ];\nin mk \"seed-c\" [ a b ]") + `
          out=$(nix-build /tmp/closure.nix --no-out-link)
          echo "built-path $out"
      - name: push it to the cache
        run: nix copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL" $(nix-build /tmp/closure.nix --no-out-link)
      - name: hand the credential to the test, out of band
        run: curl -sS --data-binary @/run/cargoxx/nix-cache.netrc CAPTURE
`

func TestSeedDeploymentJobsPushToCache(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		docker := harness.NewDocker(t)
		image := docker.NixJobImageFor(client)
		nix := client.New(t, "")
		g, registrationToken := harness.StartGiteaWithRepo(t, "pkgs")
		capture := startCaptureServer(t)

		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "cache"), 0o700); err != nil {
			t.Fatal(err)
		}
		secretKey := filepath.Join(dir, "cache", "cache.sec")
		publicKeyFile := filepath.Join(dir, "cache", "cache.pub")
		publicKey := harness.Keygen(t, "seed-cache-1", secretKey, publicKeyFile)
		caddy := harness.StartCaddy(t, harness.RunnerCache(g.URL, registrationToken, "self-hosted:docker://"+image, "host",
			"cache/store", "cache/cache.sec", "fetch_interval 500ms").String(), harness.CaddyOptions{Dir: dir})

		workflow := strings.ReplaceAll(seedWorkflow, "NONCE", fmt.Sprint(time.Now().UnixNano()))
		workflow = strings.ReplaceAll(workflow, "CAPTURE", capture.url+"/credential")
		sha := g.CommitWorkflow("pkgs", "build.yml", workflow)
		run := g.WaitRun("pkgs", sha, 5*time.Minute, harness.Completed)
		job := g.Jobs("pkgs", run.ID)[0]
		log := g.JobLog("pkgs", job.ID)
		if run.Conclusion != "success" {
			t.Fatalf("the build job concluded %q:\n%s", run.Conclusion, log)
		}
		m := regexp.MustCompile(`built-path (/nix/store/\S+-seed-c)`).FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("the job's log does not name the built path:\n%s", log)
		}
		top := m[1]

		// A consumer elsewhere substitutes the closure, trusting only the cache.
		c, store := substitute(nix, caddy.URL(), publicKey, top)
		if c.Err != nil {
			t.Fatalf("substituting what the job pushed:\n%s", c)
		}
		if paths := nix.StorePaths(store); len(paths) != 3 || !slices.Contains(paths, top) {
			t.Fatalf("the consumer's store holds %v, want the 3-path closure of %s", paths, top)
		}

		// The job's credential died with the job.
		netrc := capture.last()
		token := regexp.MustCompile(`password (\S+)`).FindStringSubmatch(netrc)
		if token == nil {
			t.Fatalf("the job did not see a netrc with a password: %q", netrc)
		}
		req, _ := http.NewRequest(http.MethodPut, caddy.URL()+"/nix-cache-info", strings.NewReader("StoreDir: /nix/store\n"))
		req.SetBasicAuth("job", token[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("the ended job's credential got %s, want 401", resp.Status)
		}

		if strings.Contains(log, token[1]) {
			t.Fatal("the job's credential appears in Gitea's job log")
		}
		if secret := readSecret(t, secretKey); strings.Contains(log, secret) {
			t.Fatal("the cache's secret key appears in Gitea's job log")
		}
		verifyClean(t, filepath.Join(dir, "cache", "store"), publicKeyFile)
	})
}

func TestProductionCaddyfileValidates(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "cache"), 0o700)
	harness.Keygen(t, "cache.example.org-1", filepath.Join(dir, "cache", "cache.sec"), filepath.Join(dir, "cache", "cache.pub"))
	config := filepath.Join(harness.RepoRoot(t), "caddyfiles", "production.Caddyfile")
	env := []string{
		"GITEA_INSTANCE_URL=https://git.example.org",
		"GITEA_RUNNER_REGISTRATION_TOKEN=0123456789abcdef0123456789abcdef01234567",
		"GITEA_RUNNER_NAME=cargoxx-pkgs-runner",
		"GITEA_RUNNER_LABELS=self-hosted:docker://cargoxx-runner-job:latest",
		"CACHE_DOMAIN=cache.example.org",
		"ACME_EMAIL=ops@example.org",
		"CADDY_HTTP_PORT=8080",
		"CADDY_HTTPS_PORT=8443",
		"XDG_DATA_HOME=" + filepath.Join(dir, "xdg"),
	}
	adapted := harness.MustRun(t, env, dir, harness.CaddyBinary(t, "caddy"), "adapt", "--config", config)
	for _, want := range []string{`"nix_cache":"main"`, `"root":"cache/store"`, `"secret_key_files":["cache/cache.sec"]`,
		`"labels":["self-hosted:docker://cargoxx-runner-job:latest"]`, `"state_file":"data/.runner"`, `"https_port":8443`,
		`"admin":{"listen":"unix//run/caddy/admin.sock"}`} {
		if !strings.Contains(adapted, want) {
			t.Errorf("adapted production.Caddyfile lacks %s:\n%s", want, adapted)
		}
	}
	if strings.Contains(adapted, "0123456789abcdef0123456789abcdef01234567") {
		t.Error("the registration token is baked into the adapted config; it should stay an {env.*} placeholder")
	}
	harness.MustRun(t, env, dir, harness.CaddyBinary(t, "caddy"), "validate", "--config", config)

	// Without a variable it needs, it says which.
	partial := slices.DeleteFunc(slices.Clone(env), func(v string) bool { return strings.HasPrefix(v, "CACHE_DOMAIN=") })
	if c := harness.Run(partial, dir, harness.CaddyBinary(t, "caddy"), "adapt", "--config", config); c.Err == nil ||
		!strings.Contains(c.Output, "environment variable CACHE_DOMAIN, which is not set") {
		t.Errorf("production.Caddyfile without CACHE_DOMAIN should say so:\n%s", c)
	}

	// Jobs on the host next to an admin endpoint on a TCP port: refused.
	withHost := append(slices.Clone(env), "GITEA_RUNNER_LABELS=self-hosted:docker://cargoxx-runner-job:latest,metal:host")
	if c := harness.Run(append(slices.Clone(withHost), "CADDY_ADMIN=localhost:2019"), dir, harness.CaddyBinary(t, "caddy"), "validate", "--config", config); c.Err == nil ||
		!strings.Contains(c.Output, "host label(s) metal reach the admin endpoint localhost:2019") {
		t.Errorf("production.Caddyfile with a host label and a TCP admin endpoint should be refused:\n%s", c)
	}
	harness.MustRun(t, withHost, dir, harness.CaddyBinary(t, "caddy"), "validate", "--config", config)
}
