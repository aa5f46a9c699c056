package e2e

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// buildOnlyWorkflow is the workflow file's content: its one job only
// builds, with nix-build, the derivations of closure (a Nix expression
// over mk) and then runs after; it never pushes anything itself. It runs
// only for the commit that adds it.
func buildOnlyWorkflow(file, closure, after string) string {
	return fmt.Sprintf(`on:
  push:
    paths: ['.gitea/workflows/%s']
jobs:
  build:
    runs-on: self-hosted
    defaults:
      run:
        shell: sh
    steps:
      - name: build with nix
        run: |
`+closureScript("", "in %s")+`
          out=$(nix-build /tmp/closure.nix --no-out-link)
          echo "built-path $out"
          %s
`, file, closure, after)
}

// autoPushCache starts Gitea with the repository repo and a caddy whose
// runner hands its jobs, in image, the cache it serves; it returns them
// with the cache's public key and root.
func autoPushCache(t *testing.T, repo, image, autoPush string) (*harness.Gitea, *harness.Caddy, string, string) {
	t.Helper()
	g, token := harness.StartGiteaWithRepo(t, repo)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cache"), 0o700); err != nil {
		t.Fatal(err)
	}
	publicKey := harness.Keygen(t, "auto-push-1", filepath.Join(dir, "cache", "cache.sec"), filepath.Join(dir, "cache", "cache.pub"))
	caddyfile := harness.RunnerCache(g.URL, token, "self-hosted:docker://"+image, "host",
		"cache/store", "cache/cache.sec", "fetch_interval 500ms")
	caddyfile.Runner.AutoPush = autoPush
	caddy := harness.StartCaddy(t, caddyfile.String(), harness.CaddyOptions{Dir: dir})
	return g, caddy, publicKey, filepath.Join(dir, "cache")
}

// builtPath is the path a buildOnlyWorkflow job says it built.
func builtPath(t *testing.T, log string) string {
	t.Helper()
	m := regexp.MustCompile(`built-path (/nix/store/\S+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("the job's log does not name the built path:\n%s", log)
	}
	return m[1]
}

// TestAutoPushBuiltPaths: a job that only runs nix-build has its three new
// paths pushed, and the log's summary names them; a later job whose
// closure's base the cache holds uploads only what is new.
func TestAutoPushBuiltPaths(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		image := harness.NewDocker(t).NixJobImageFor(client)
		nix := client.New(t, "")
		g, caddy, publicKey, cacheDir := autoPushCache(t, "autopush", image, "")
		nonce := fmt.Sprint(time.Now().UnixNano())

		base := fmt.Sprintf(`let a = mk "ap-a-%[1]s" []; b = mk "ap-b-%[1]s" [ a ]; in mk "ap-c-%[1]s" [ a b ]`, nonce)
		sha := g.CommitWorkflow("autopush", "build.yml", buildOnlyWorkflow("build.yml", base, ""))
		log := g.SucceededLog("autopush", g.WaitRun("autopush", sha, 5*time.Minute, harness.Completed))
		top := builtPath(t, log)
		c, store := substitute(nix, caddy.URL(), publicKey, top)
		if c.Err != nil {
			t.Fatalf("substituting what the job built, with no push step:\n%s\njob log:\n%s", c, log)
		}
		paths := nix.StorePaths(store)
		if len(paths) != 3 || !slices.Contains(paths, top) {
			t.Fatalf("the consumer's store holds %v, want the 3-path closure of %s", paths, top)
		}
		summary := regexp.MustCompile(`auto push to \S+: .*`).FindString(log)
		t.Logf("the job log's summary: %s", summary)
		for _, p := range paths {
			if !strings.Contains(summary, p) {
				t.Fatalf("the job log's summary does not name %s: %q\n%s", p, summary, log)
			}
		}
		if !strings.Contains(summary, "pushed 3 paths") {
			t.Fatalf("the job log's summary does not say 3 paths were pushed: %q", summary)
		}
		// The auto-push agent watches the container's store: Nix runs
		// no hook and the job has no push step.
		if strings.Contains(log, "this job's Nix built to") {
			t.Fatalf("a container job ran the hook's push step:\n%s", log)
		}

		// The next job builds one path on that base: its container
		// substitutes the base from the cache and uploads only the new top.
		narinfosBefore := metricValue(t, caddy, `caddy_nix_cache_uploads_total{kind="narinfo",outcome="stored"}`)
		onBase := fmt.Sprintf(`let a = mk "ap-a-%[1]s" []; b = mk "ap-b-%[1]s" [ a ]; c = mk "ap-c-%[1]s" [ a b ]; in mk "ap-d-%[1]s" [ c ]`, nonce)
		sha = g.CommitWorkflow("autopush", "more.yml", buildOnlyWorkflow("more.yml", onBase, ""))
		log = g.SucceededLog("autopush", g.WaitRun("autopush", sha, 5*time.Minute, harness.Completed))
		if got := metricValue(t, caddy, `caddy_nix_cache_uploads_total{kind="narinfo",outcome="stored"}`) - narinfosBefore; got != 1 {
			t.Fatalf("the job on a base the cache held stored %v narinfos, want 1 (only its new path)\n%s", got, log)
		}
		if c, _ := substitute(nix, caddy.URL(), publicKey, builtPath(t, log)); c.Err != nil {
			t.Fatalf("substituting the second job's path:\n%s", c)
		}
		verifyClean(t, filepath.Join(cacheDir, "store"), filepath.Join(cacheDir, "cache.pub"))
	})
}

// TestAutoPushFailedJob: a job that builds two paths and then fails has
// both pushed, and still fails.
func TestAutoPushFailedJob(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		image := harness.NewDocker(t).NixJobImageFor(client)
		nix := client.New(t, "")
		g, caddy, publicKey, _ := autoPushCache(t, "failing", image, "")
		nonce := fmt.Sprint(time.Now().UnixNano())
		closure := fmt.Sprintf(`let a = mk "fail-a-%[1]s" []; in mk "fail-b-%[1]s" [ a ]`, nonce)
		sha := g.CommitWorkflow("failing", "build.yml", buildOnlyWorkflow("build.yml", closure, "echo the tests fail; exit 1"))
		run := g.WaitRun("failing", sha, 5*time.Minute, harness.Completed)
		log := g.JobLog("failing", g.Jobs("failing", run.ID)[0].ID)
		if run.Conclusion != "failure" {
			t.Fatalf("the failing job concluded %q:\n%s", run.Conclusion, log)
		}
		c, store := substitute(nix, caddy.URL(), publicKey, builtPath(t, log))
		if c.Err != nil {
			t.Fatalf("substituting what the failed job built:\n%s\njob log:\n%s", c, log)
		}
		if paths := nix.StorePaths(store); len(paths) != 2 {
			t.Fatalf("the consumer's store holds %v, want the failed job's 2 paths", paths)
		}
	})
}

// TestAutoPushOff: with auto_push off, what a job builds stays its own.
func TestAutoPushOff(t *testing.T) {
	image := harness.NewDocker(t).NixJobImage()
	nix := harness.Nix28.New(t, "")
	g, caddy, publicKey, _ := autoPushCache(t, "off", image, "off")
	closure := fmt.Sprintf(`mk "off-%d" []`, time.Now().UnixNano())
	sha := g.CommitWorkflow("off", "build.yml", buildOnlyWorkflow("build.yml", closure, ""))
	log := g.SucceededLog("off", g.WaitRun("off", sha, 5*time.Minute, harness.Completed))
	if c, _ := substitute(nix, caddy.URL(), publicKey, builtPath(t, log)); c.Err == nil {
		t.Fatalf("with auto_push off the cache serves what the job built:\n%s", log)
	}
	if strings.Contains(log, "auto push") {
		t.Fatalf("with auto_push off the job log speaks of an automatic push:\n%s", log)
	}
}

// TestAutoPushCacheRefusing: a cache that answers 503 to every upload
// does not fail the job, whose log says what was not pushed; with
// auto_push required the job fails.
func TestAutoPushCacheRefusing(t *testing.T) {
	image := harness.NewDocker(t).NixJobImage()
	g, token := harness.StartGiteaWithRepo(t, "refused")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cache"), 0o700); err != nil {
		t.Fatal(err)
	}
	harness.Keygen(t, "refused-1", filepath.Join(dir, "cache", "cache.sec"), filepath.Join(dir, "cache", "cache.pub"))

	// Jobs reach the cache through a proxy that refuses uploads.
	var cache atomic.Pointer[url.URL]
	var refused atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			refused.Add(1)
			http.Error(w, "the cache is down for maintenance", http.StatusServiceUnavailable)
			return
		}
		httputil.NewSingleHostReverseProxy(cache.Load()).ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	config := func(autoPush string) string {
		c := harness.RunnerCache(g.URL, token, "self-hosted:docker://"+image, "host", "cache/store", "cache/cache.sec", "fetch_interval 500ms")
		c.Cache.Options[1] = "url " + proxy.URL
		c.Runner.AutoPush = autoPush
		return c.String()
	}
	caddy := harness.StartCaddy(t, config(""), harness.CaddyOptions{Dir: dir})
	target, err := url.Parse(caddy.URL())
	if err != nil {
		t.Fatal(err)
	}
	cache.Store(target)

	nonce := time.Now().UnixNano()
	run := func(file, wantConclusion string) string {
		t.Helper()
		closure := fmt.Sprintf(`let a = mk "refused-a-%[1]d" []; in mk "refused-b-%[1]d" [ a ]`, nonce)
		sha := g.CommitWorkflow("refused", file, buildOnlyWorkflow(file, strings.ReplaceAll(closure, "refused-", strings.TrimSuffix(file, ".yml")+"-refused-"), ""))
		run := g.WaitRun("refused", sha, 5*time.Minute, harness.Completed)
		log := g.JobLog("refused", g.Jobs("refused", run.ID)[0].ID)
		if run.Conclusion != wantConclusion {
			t.Fatalf("with the cache refusing uploads the job concluded %q, want %q:\n%s", run.Conclusion, wantConclusion, log)
		}
		if !regexp.MustCompile(`auto push to \S+: 2 built paths; pushed 0 paths .*NOT PUSHED: 2 built paths, uploading /nix/store/\S+-refused-a-\d+: .*503`).MatchString(log) {
			t.Fatalf("the job log does not say which paths were not pushed, and why:\n%s", log)
		}
		t.Logf("the job log's summary: %s", regexp.MustCompile(`auto push to \S+: .*`).FindString(log))
		return log
	}
	run("default.yml", "success")
	if refused.Load() == 0 {
		t.Fatal("the job never tried to upload")
	}
	if err := caddy.Reload(config("required")); err != nil {
		t.Fatal(err)
	}
	run("required.yml", "failure")
}

// TestAutoPushHostJob: a job on a host label, building with the host's
// Nix, has what it built pushed too.
func TestAutoPushHostJob(t *testing.T) {
	nix := harness.Nix28.New(t, "")
	harness.LookTool(t, "nix-build")
	g, token := harness.StartGiteaWithRepo(t, "metal")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cache"), 0o700); err != nil {
		t.Fatal(err)
	}
	publicKey := harness.Keygen(t, "metal-1", filepath.Join(dir, "cache", "cache.sec"), filepath.Join(dir, "cache", "cache.pub"))
	caddy := harness.StartCaddy(t, harness.RunnerCache(g.URL, token, "self-hosted:host", "host",
		"cache/store", "cache/cache.sec", "fetch_interval 500ms").String(), harness.CaddyOptions{Dir: dir, Env: []string{"HOME=" + t.TempDir()}})
	closure := fmt.Sprintf(`let a = mk "metal-a-%[1]d" []; in mk "metal-b-%[1]d" [ a ]`, time.Now().UnixNano())
	sha := g.CommitWorkflow("metal", "build.yml", buildOnlyWorkflow("build.yml", closure, ""))
	log := g.SucceededLog("metal", g.WaitRun("metal", sha, 5*time.Minute, harness.Completed))
	c, store := substitute(nix, caddy.URL(), publicKey, builtPath(t, log))
	if c.Err != nil {
		t.Fatalf("substituting what the host job built:\n%s\njob log:\n%s", c, log)
	}
	if paths := nix.StorePaths(store); len(paths) != 2 {
		t.Fatalf("the consumer's store holds %v, want the host job's 2 paths", paths)
	}
}

// TestAutoPushDockerStep: a `uses: docker://` step gets the job's
// NIX_CONFIG but not its auto-push directory; Nix in that step container
// builds as it would without automatic push, and what the job container
// built is pushed as before. The job container, the step's container and
// their volumes, which act leaves to the runner when it watches the
// store, are gone once the job is.
func TestAutoPushDockerStep(t *testing.T) {
	docker := harness.NewDocker(t)
	image := docker.NixJobImage()
	nix := harness.Nix28.New(t, "")
	g, caddy, publicKey, _ := autoPushCache(t, "dockerstep", image, "")
	nonce := time.Now().UnixNano()
	workflow := fmt.Sprintf(`on:
  push:
    paths: ['.gitea/workflows/step.yml']
jobs:
  build:
    runs-on: self-hosted
    steps:
      - name: build in the job container
        shell: sh
        run: |
          cat > closure.nix <<'EOF'
          let
            mk = name: builtins.derivation {
              inherit name;
              system = builtins.currentSystem;
              builder = "/bin/sh";
              args = [ "-c" "echo ${name} > $out" ];
            };
          in { job = mk "job-%[1]d"; step = mk "step-%[1]d"; }
          EOF
          echo "built-path $(nix-build closure.nix -A job --no-out-link)"
      - name: build in a step container
        uses: docker://%[2]s
        with:
          entrypoint: /bin/sh
          args: -c "echo step-built $(nix-build closure.nix -A step --no-out-link)"
`, nonce, image)
	leftovers := func() string {
		return docker.Must("ps", "-a", "--filter", "name=GITEA-ACTIONS-TASK-", "--format", "{{.Names}}") +
			docker.Must("volume", "ls", "-q", "--filter", "name=GITEA-ACTIONS-TASK-")
	}
	before := leftovers()
	sha := g.CommitWorkflow("dockerstep", "step.yml", workflow)
	log := g.SucceededLog("dockerstep", g.WaitRun("dockerstep", sha, 5*time.Minute, harness.Completed))
	if after := leftovers(); after != before {
		t.Fatalf("the job left containers or volumes behind:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if !regexp.MustCompile(`step-built /nix/store/\S+-step-`).MatchString(log) {
		t.Fatalf("the step container did not build its path:\n%s", log)
	}
	if c, _ := substitute(nix, caddy.URL(), publicKey, builtPath(t, log)); c.Err != nil {
		t.Fatalf("substituting what the job container built:\n%s\njob log:\n%s", c, log)
	}
}
