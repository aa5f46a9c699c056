package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// poisonWorkflow builds a path whose store path is the same on every ref
// but whose content is the ref that built it: the builder reads a file
// outside its inputs, as a job that controls its build environment can
// make any build do. A job first tries to substitute the path (building
// nothing), and otherwise builds it and pushes it with its credential.
const poisonWorkflow = `on: [push, pull_request]
jobs:
  build:
    runs-on: self-hosted
    defaults:
      run:
        shell: sh
    steps:
      - run: |
          cat > /tmp/p.nix <<'EOF'
          builtins.derivation {
            name = "poisonable";
            system = builtins.currentSystem;
            builder = "/bin/sh";
            args = [ "-c" "read line < /tmp/marker; echo \"$line\" > $out" ];
          }
          EOF
          if out=$(nix-build /tmp/p.nix --no-out-link --max-jobs 0 2>/tmp/substitute.log); then
            echo "substituted $out $(cat $out)"
          else
            echo "${{ github.ref }}" > /tmp/marker
            out=$(nix-build /tmp/p.nix --no-out-link)
            echo "built $out $(cat $out)"
            nix copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL" $out
          fi
`

// TestBranchCannotPoisonMain: a branch job builds the path main will
// build, with other content, and pushes it first. The push lands in the
// branch's overlay: the public URL does not serve it, a later job of the
// branch substitutes it, another branch does not see it, nor does a pull
// request from the branch, which has an overlay of its own. Then main builds
// and pushes the honest content: it is stored, not refused, the
// divergence is counted and logged with the branch's ref, and a fresh
// client that trusts only the cache's key gets main's content.
func TestBranchCannotPoisonMain(t *testing.T) {
	image := harness.NewDocker(t).NixJobImage()
	g, token := harness.StartGiteaWithRepo(t, "pkgs")
	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, "tiers-1")
	caddy := harness.StartCaddy(t, harness.RunnerCache(g.URL, token, "self-hosted:docker://"+image, "host",
		root, secret, "fetch_interval 500ms").String(), harness.CaddyOptions{})
	repo := harness.GiteaAdmin + "/pkgs"

	outcome := regexp.MustCompile(`(built|substituted) (/nix/store/\S+-poisonable) (\S+)`)
	// runOf is the outcome of the run of event for commit sha, which has
	// runs runs.
	runOf := func(sha, event string, runs int) (how, out, content, log string) {
		t.Helper()
		var r *gitea.ActionWorkflowRun
		for _, candidate := range g.WaitRuns("pkgs", sha, runs, 5*time.Minute, harness.Completed) {
			// Gitea names a pull request's runs pull_request or
			// pull_request_sync.
			if candidate.Event == event || strings.HasPrefix(candidate.Event, event+"_") {
				r = candidate
			}
		}
		if r == nil {
			var events []string
			for _, candidate := range g.WaitRuns("pkgs", sha, runs, time.Second, harness.Completed) {
				events = append(events, fmt.Sprintf("%d %q %s", candidate.ID, candidate.Event, candidate.HeadBranch))
			}
			t.Fatalf("no %s run for %s, only %v", event, sha, events)
		}
		log = g.SucceededLog("pkgs", r)
		m := outcome.FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("the job's log says neither what it built nor what it substituted:\n%s", log)
		}
		return m[1], m[2], m[3], log
	}
	run := func(sha string) (how, out, content, log string) {
		t.Helper()
		return runOf(sha, "push", 1)
	}
	workflow := ".gitea/workflows/build.yml"

	// The branch goes first, with a workflow main does not have yet.
	how, out, content, log := run(g.CommitToBranch("pkgs", "feature", workflow, poisonWorkflow))
	if how != "built" || content != "refs/heads/feature" {
		t.Fatalf("the branch's first job %s %s", how, content)
	}
	if !strings.Contains(log, "goes to the overlay of "+repo+"@refs/heads/feature") {
		t.Errorf("the branch job's log does not say where its pushes go:\n%s", log)
	}
	narinfo := caddy.URL() + "/" + strings.TrimPrefix(out, "/nix/store/")[:32] + ".narinfo"
	for _, url := range []string{narinfo, strings.Replace(narinfo, caddy.URL(), caddy.URL()+"/upload", 1)} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("anonymous GET %s after the branch's push: %d, want 404", url, resp.StatusCode)
		}
	}

	// A later job of the branch substitutes its own push, with nothing
	// more configured; another branch does not see it.
	second := g.CommitToBranch("pkgs", "feature", "second.txt", "a second commit\n")
	if how, _, content, log := run(second); how != "substituted" || content != "refs/heads/feature" {
		t.Fatalf("the branch's second job %s %s, want its overlay's path substituted:\n%s", how, content, log)
	}
	if how, _, content, _ := run(g.CommitToBranch("pkgs", "other", workflow, poisonWorkflow)); how != "built" || content != "refs/heads/other" {
		t.Fatalf("another branch's job %s %s, want it to build: it must not see the first branch's overlay", how, content)
	}

	// A pull request from the branch is a ref of its own: its first job
	// builds and pushes into the pull request's overlay, and its next one
	// substitutes that, as the branch's own next job substitutes the
	// branch's.
	g.PullRequest("pkgs", "feature")
	how, _, content, log = runOf(second, "pull_request", 2)
	if how != "built" || !strings.HasPrefix(content, "refs/pull/") {
		t.Fatalf("the pull request's first job %s %s:\n%s", how, content, log)
	}
	if !strings.Contains(log, "goes to the overlay of "+repo+"@refs/pull/") {
		t.Errorf("the pull request job's log does not say where its pushes go:\n%s", log)
	}
	pullRef := content
	third := g.CommitToBranch("pkgs", "feature", "third.txt", "a third commit\n")
	if how, _, content, log := runOf(third, "pull_request", 2); how != "substituted" || content != pullRef {
		t.Fatalf("the pull request's next job %s %s, want its overlay's %s:\n%s", how, content, pullRef, log)
	}
	if how, _, content, log := runOf(third, "push", 2); how != "substituted" || content != "refs/heads/feature" {
		t.Fatalf("the branch's third job %s %s, want its own overlay's path:\n%s", how, content, log)
	}

	// Main builds the honest content and pushes it: stored, and counted
	// against both overlays.
	how, mainOut, content, log := run(g.CommitWorkflow("pkgs", "build.yml", poisonWorkflow))
	if how != "built" || content != "refs/heads/main" || mainOut != out {
		t.Fatalf("main's job %s %s %s, want refs/heads/main built as %s:\n%s", how, mainOut, content, out, log)
	}
	if strings.Contains(log, "goes to the overlay") {
		t.Errorf("main's job was put in an overlay:\n%s", log)
	}
	if n := metric(t, caddy, "caddy_nix_cache_tier_divergence_total"); n != 3 {
		t.Errorf("tier divergences counted: %v, want 3 (two branches and a pull request pushed other content)", n)
	}
	if logged := caddy.Log(); !strings.Contains(logged, "an overlay holds this path with another NAR") || !strings.Contains(logged, `"ref":"refs/heads/feature"`) {
		t.Errorf("Caddy's log does not name the diverging ref:\n%s", grepLines(logged, "overlay"))
	}

	// A consumer trusting only the cache's key gets main's content.
	nix := harness.NewNix(t, "")
	c, store := substitute(nix, caddy.URL(), public, out)
	if c.Err != nil {
		t.Fatalf("a fresh client substituting %s:\n%s", out, c)
	}
	if data, err := os.ReadFile(filepath.Join(store, out)); err != nil || strings.TrimSpace(string(data)) != "refs/heads/main" {
		t.Fatalf("a fresh client got %q (%v), want main's content", data, err)
	}
}
