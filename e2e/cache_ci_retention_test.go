package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// ciPushWorkflow builds a closure of two paths, new for every commit and
// event, and pushes it to the cache, on pushes to main and on pull
// requests.
var ciPushWorkflow = `on:
  push:
    branches: [main]
  pull_request:
jobs:
  build:
    runs-on: self-hosted
    defaults:
      run:
        shell: sh
    steps:
      - run: |
` + closureScript("${{ github.sha }}-${{ github.event_name }}", "  dep = mk \"ci-dep\" [];\nin mk \"ci-top\" [ dep ]") + `
          out=$(nix-build /tmp/closure.nix --no-out-link)
          echo "built-path $out"
          nix copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL" $out
`

// TestRetentionKeepsTheLastDefaultBranchRuns: with keep_default_branch_runs
// 1, a collection that may delete everything keeps the closure the last
// successful run on main pushed, drops the pull request's overlay and
// deletes an older run's closure, and path-info links to the run.
func TestRetentionKeepsTheLastDefaultBranchRuns(t *testing.T) {
	image := harness.NewDocker(t).NixJobImage()
	g, token := harness.StartGiteaWithRepo(t, "pkgs")
	dir := t.TempDir()
	root := filepath.Join(dir, "cache")
	secret, public := keygen(t, "ci-retention-1")
	caddyfile := harness.RunnerCache(g.URL, token, "self-hosted:docker://"+image, "host",
		root, secret, "fetch_interval 500ms")
	caddyfile.Runner.KeepDefaultBranchRuns = 1
	caddy := harness.StartCaddy(t, caddyfile.String(), harness.CaddyOptions{})
	admin := "--address=" + caddy.Admin

	built := func(sha string) string {
		t.Helper()
		log := g.SucceededLog("pkgs", g.WaitRun("pkgs", sha, 5*time.Minute, harness.Completed))
		m := regexp.MustCompile(`built-path (/nix/store/\S+-ci-top)`).FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("the job's log does not name the built path:\n%s", log)
		}
		return m[1]
	}
	older := built(g.CommitWorkflow("pkgs", "build.yml", ciPushWorkflow))
	latest := built(g.CommitFile("pkgs", "second.txt", "a second commit on main\n"))
	pullRequest := built(g.OpenPullRequest("pkgs", "feature", "feature.txt", "a change under review\n"))
	// The pull request pushed into its overlay: the cache proper, which
	// everyone substitutes from, does not have it.
	if resp := do(t, http.MethodGet, narinfoURL(caddy.URL(), pullRequest), nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the pull request's push on the cache's public URL: %s, want 404", resp.Status)
	}

	var gc gcAnswer
	if c := nixCache(t, &gc, "gc", "--max-size", "1", "--min-age", "0s", admin); c.Err != nil {
		t.Fatalf("gc:\n%s", c)
	}
	position := func(path string) int { return slices.Index(gc.Deleted, path) }
	if position(latest) >= 0 || position(older) < 0 {
		t.Fatalf("deleted %v;\nwant the older run's %s, not the last run's %s", gc.Deleted, older, latest)
	}
	if len(gc.Deleted) != 2 {
		t.Errorf("deleted %d paths of the cache proper, want the older run's closure of 2 paths: %v", len(gc.Deleted), gc.Deleted)
	}
	if len(gc.Overlays) != 1 || !strings.HasSuffix(gc.Overlays[0], "/pkgs@refs/pull/1/head") {
		t.Errorf("dropped the overlays %v, want the pull request's", gc.Overlays)
	}
	nix := harness.NewNix(t, "")
	if c, store := substitute(nix, caddy.URL(), public, latest); c.Err != nil {
		t.Fatalf("substituting the kept run's closure:\n%s", c)
	} else if got := nix.StorePaths(store); len(got) != 2 {
		t.Fatalf("the kept closure substituted as %v", got)
	}
	publicFile := filepath.Join(dir, "cache.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	verifyClean(t, root, publicFile)

	var info struct {
		Pusher struct {
			Job struct {
				Repository    string `json:"repository"`
				RunURL        string `json:"run_url"`
				Event         string `json:"event"`
				Ref           string `json:"ref"`
				Commit        string `json:"commit"`
				DefaultBranch bool   `json:"default_branch"`
			} `json:"job"`
		} `json:"pusher"`
	}
	if c := nixCache(t, &info, "path-info", latest, admin); c.Err != nil {
		t.Fatalf("path-info:\n%s", c)
	}
	job := info.Pusher.Job
	if !strings.HasSuffix(job.Repository, "/pkgs") || job.Event != "push" || job.Ref != "refs/heads/main" || !job.DefaultBranch || len(job.Commit) != 40 {
		t.Fatalf("path-info of the kept path: %+v", job)
	}
	resp, err := http.Get(job.RunURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(job.RunURL, g.URL) {
		t.Fatalf("the run link %s answers %s", job.RunURL, resp.Status)
	}
	t.Logf("kept %s, pushed by %s", latest, job.RunURL)
}
