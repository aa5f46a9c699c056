package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// The modules this bundle registers; both builds must list all of them.
var bundleModules = []string{
	"http.handlers.nix_cache",
	"gitea_runner",
}

func TestBinariesListBundleModules(t *testing.T) {
	for _, name := range []string{"caddy", "caddy-xcaddy"} {
		t.Run(name, func(t *testing.T) {
			bin := harness.CaddyBinary(t, name)
			out := harness.MustRun(t, nil, "", bin, "list-modules")
			listed := strings.Fields(out)
			for _, id := range bundleModules {
				if !slices.Contains(listed, id) {
					t.Errorf("%s list-modules does not list %s:\n%s", name, id, out)
				}
			}
			// The standard modules are there too: this is a full Caddy.
			if !slices.Contains(listed, "http.handlers.file_server") {
				t.Errorf("%s lacks Caddy's standard modules:\n%s", name, out)
			}
		})
	}
}

func TestNixClosureRoundTrip(t *testing.T) {
	nix := harness.NewNix(t, "")
	closure := nix.BuildClosure("smoke", 0)

	cache := filepath.Join(t.TempDir(), "cache")
	if c := nix.Copy("--to", "file://"+cache, closure.Top); c.Err != nil {
		t.Fatalf("nix copy to a file cache:\n%s", c)
	}
	narinfos, _ := filepath.Glob(filepath.Join(cache, "*.narinfo"))
	if len(narinfos) != len(closure.Paths) {
		t.Fatalf("file cache holds %d narinfos, want %d (one per path of %v)", len(narinfos), len(closure.Paths), closure.Paths)
	}

	store := nix.ChrootStore()
	if c := nix.Copy("--from", "file://"+cache, "--to", store, "--no-check-sigs", closure.Top); c.Err != nil {
		t.Fatalf("nix copy from the file cache into a chroot store:\n%s", c)
	}
	if got := nix.StorePaths(store); !slices.Equal(got, closure.Paths) {
		t.Fatalf("chroot store holds %v, want the closure %v", got, closure.Paths)
	}
	// The content arrived, not just the database rows.
	name, err := os.ReadFile(filepath.Join(store, closure.Top, "name"))
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(name)), "smoke-top") {
		t.Fatalf("top path's content in the chroot store: %q, %v", name, err)
	}
}

func TestGiteaQueuesWorkflowRun(t *testing.T) {
	g := harness.StartGitea(t, "")
	g.CreateRepo("smoke")
	sha := g.CommitWorkflow("smoke", "ci.yml", `on: [push]
jobs:
  hello:
    runs-on: e2e
    steps:
      - run: echo hello
`)
	run := g.WaitRun("smoke", sha, time.Minute, harness.Queued)
	jobs := g.Jobs("smoke", run.ID)
	if len(jobs) != 1 || jobs[0].Name != "hello" {
		t.Fatalf("run %d has jobs %+v, want one job named hello", run.ID, jobs)
	}
	if token := g.RepoRegistrationToken("smoke"); len(token) < 32 {
		t.Fatalf("registration token %q is too short", token)
	}
	// With no runner, cancelling is the only way the run ends.
	g.CancelRun("smoke", run.ID)
	done := g.WaitRun("smoke", sha, time.Minute, harness.Completed)
	if done.Conclusion != "cancelled" {
		t.Fatalf("cancelled run concluded %q", done.Conclusion)
	}
}

func TestDockerRunsJobImage(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.JobImage()
	out := docker.Must("run", "--rm", "--network", "host", image, "sh", "-c", "echo ok")
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("job image printed %q, want ok", out)
	}
	// Building again reuses the tagged image.
	if again := docker.JobImage(); again != image {
		t.Fatalf("second JobImage returned %q, want %q", again, image)
	}
}

func TestCaddyServesLocalCaddyfile(t *testing.T) {
	caddyfile, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "caddyfiles", "local.Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	c := harness.StartCaddy(t, string(caddyfile), harness.CaddyOptions{})
	resp, err := http.Get(c.URL() + "/nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "StoreDir: /nix/store\n") {
		t.Fatalf("GET /nix-cache-info: %s %q", resp.Status, body)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "var", "cache")); err != nil {
		t.Fatalf("the cache root var/cache was not created in the working directory: %v", err)
	}
	// The first start made a key pair; the landing page shows its public key.
	public, err := os.ReadFile(filepath.Join(c.Dir, "var", "cache.pub"))
	if err != nil {
		t.Fatalf("no public key generated on first start: %v", err)
	}
	resp, err = http.Get(c.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	landing, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(landing), strings.TrimSpace(string(public))) || !strings.Contains(c.Log(), strings.TrimSpace(string(public))) {
		t.Fatalf("the public key %s is not on the landing page or in the log:\n%s", public, landing)
	}
	if err := c.Reload(string(caddyfile)); err != nil {
		t.Fatalf("reloading the same Caddyfile: %v", err)
	}
}
