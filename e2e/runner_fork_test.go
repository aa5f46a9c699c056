package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// cacheAccessWorkflow reports what a job run for event was given of the Nix
// cache.
func cacheAccessWorkflow(event string) string {
	return `on: [` + event + `]
jobs:
  access:
    runs-on: e2e
    defaults:
      run:
        shell: sh
    steps:
      - run: |
          echo "upload credential: $(test -e /run/cargoxx/nix-cache.netrc && echo PRESENT || echo ABSENT)"
          echo "cache url: $CARGOXX_NIX_CACHE_URL"
          echo "$NIX_CONFIG" | sed 's/^/nix config: /'
`
}

// TestForkPullRequestGetsNoUploadCredential checks that a job running a
// pull request from a fork may read the Nix cache but gets no credential to
// write to it, while a push to the repository gets one.
func TestForkPullRequestGetsNoUploadCredential(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "pkgs")
	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, "fork-1")
	caddy := harness.StartCaddy(t, harness.RunnerCache(g.URL, token, "e2e:docker://"+image, "none",
		root, secret, "fetch_interval 500ms").String(), harness.CaddyOptions{})

	jobLog := func(sha string) string {
		return g.SucceededLog("pkgs", g.WaitRun("pkgs", sha, 3*time.Minute, harness.Completed))
	}
	pushLog := jobLog(g.CommitWorkflow("pkgs", "push.yml", cacheAccessWorkflow("push")))
	if !strings.Contains(pushLog, "upload credential: PRESENT") || !strings.Contains(pushLog, "netrc-file = /run/cargoxx/nix-cache.netrc") {
		t.Fatalf("a push job got no upload credential:\n%s", pushLog)
	}

	forkLog := jobLog(g.OpenForkPullRequest("pkgs", "contributor", "pull-request.yml", cacheAccessWorkflow("pull_request")))
	for _, want := range []string{
		"upload credential: ABSENT",
		"cache url: " + caddy.URL(),
		"nix config: extra-substituters = " + caddy.URL(),
		"nix config: extra-trusted-public-keys = " + public,
		"pull request from a fork",
	} {
		if !strings.Contains(forkLog, want) {
			t.Errorf("the fork's job log lacks %q:\n%s", want, forkLog)
		}
	}
	if strings.Contains(forkLog, "netrc-file") {
		t.Errorf("the fork's job was pointed at a netrc file:\n%s", forkLog)
	}
}
