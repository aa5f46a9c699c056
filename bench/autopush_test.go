package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// closureWorkflow builds, with nix-build in the job container, a closure of
// n small new paths, each referring to the two before it, and with push
// set copies it to the cache with an explicit step, as the seed's
// workflow does. It runs when its file is pushed.
func closureWorkflow(file, label string, n int, push bool) string {
	pushStep := ""
	if push {
		pushStep = `      - run: nix copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL" $(nix-build /tmp/c.nix --no-out-link)
`
	}
	return fmt.Sprintf(`on:
  push:
    paths: ['.gitea/workflows/%[1]s']
jobs:
  build:
    runs-on: %[2]s
    defaults:
      run:
        shell: sh
    steps:
      - run: |
          cat > /tmp/c.nix <<'EOF'
          let
            mk = i: deps: builtins.derivation {
              name = "p${toString i}";
              system = builtins.currentSystem;
              builder = "/bin/sh";
              args = [ "-c" "echo ${toString i} > $out; for d in ${toString deps}; do echo $d >> $out; done" ];
              nonce = "%[1]s-%[3]d";
            };
            paths = builtins.genList (i: mk i (if i < 2 then [] else [ (builtins.elemAt paths (i - 1)) (builtins.elemAt paths (i - 2)) ])) %[4]d;
          in builtins.elemAt paths (%[4]d - 1)
          EOF
          nix-build /tmp/c.nix --no-out-link
%[5]s`, file, label, time.Now().UnixNano(), n, pushStep)
}

// BenchmarkAutoPush runs the same build of a closure of 50 small new paths
// in the seed's way three times over, alternating: pushing nothing, pushing
// with the workflow's own `nix copy` step, and pushing automatically with
// no step. Each contender's runner hands its jobs a cache of its own in the
// same caddy; the job's time is from its first log line to its last.
func BenchmarkAutoPush(b *testing.B) {
	docker := harness.NewDocker(b)
	image := docker.NixJobImageFor(harness.NixCurrent())
	const paths = 50
	g, token := harness.StartGiteaWithRepo(b, "autopush")

	// Two caddies: one pushes automatically, one does not; each serves
	// its own cache.
	start := func(name, labels, autoPush string) {
		dir := b.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "cache"), 0o700); err != nil {
			b.Fatal(err)
		}
		harness.Keygen(b, name+"-1", filepath.Join(dir, "cache", "cache.sec"), filepath.Join(dir, "cache", "cache.pub"))
		c := harness.RunnerCache(g.URL, token, labels, "host", "cache/store", "cache/cache.sec",
			"name runner-"+name, "fetch_interval 500ms", "capacity 1")
		c.Runner.AutoPush = autoPush
		harness.StartCaddy(b, c.String(), harness.CaddyOptions{Dir: dir})
	}
	start("auto", "auto:docker://"+image, "on")
	start("manual", "manual:docker://"+image+" none:docker://"+image, "off")
	time.Sleep(3 * time.Second)

	contenders := []struct {
		name, label string
		push        bool
	}{
		{"no push", "none", false},
		{"explicit nix copy step", "manual", true},
		{"automatic push", "auto", false},
	}
	wall := newComparison(fmt.Sprintf("Automatic push: a job building a closure of %d small new paths, first log line to last (current Nix)", paths), "s", "lower",
		"automatic push at most 1.1x no push")
	wall.holds = ratioAtMost("automatic push", "no push", 1.1)
	wall.notes = append(wall.notes, "The same workflow, alternating, in the same job image: without a push, with the seed's `nix copy --to \"$CARGOXX_NIX_CACHE_UPLOAD_URL\"` step, and with automatic push and no step. "+
		"Each contender's runner hands its jobs its own empty cache, so every path is new to it. "+
		"The paths form a chain (each refers to the two before it), and a narinfo is accepted only once its references are stored, so they are uploaded one after another. "+
		"Automatic push watches the job container's store from inside it, with the auto-push agent the runner starts there, and uploads each path as Nix registers it, while the build goes on; Nix runs no hook and the job gets no step. After the job's steps the agent pushes what is left before the runner removes the container, where the explicit step runs `nix copy` after the build.")
	for round := range envInt("BENCH_ROUNDS", 5) {
		for i, c := range contenders {
			file := fmt.Sprintf("%s-%d-%d.yml", c.label, round, i)
			sha := g.CommitWorkflow("autopush", file, closureWorkflow(file, c.label, paths, c.push))
			run := g.WaitRun("autopush", sha, 10*time.Minute, harness.Completed)
			if run.Conclusion != "success" {
				b.Fatalf("%s round %d concluded %s", c.name, round, run.Conclusion)
			}
			jobs := g.Jobs("autopush", run.ID)
			log := g.JobLog("autopush", jobs[0].ID)
			if c.name == "automatic push" && !strings.Contains(log, fmt.Sprintf("pushed %d paths", paths)) {
				b.Fatalf("the automatic push did not push the %d paths:\n%s", paths, log)
			}
			first, last := logSpan(b, log)
			wall.add(c.name, last.Sub(first).Seconds())
		}
	}
	m := func(name string) float64 { return median(wall.samples[name]) }
	wall.notes = append(wall.notes, fmt.Sprintf("In this run automatic push added %.2f s to the job, the explicit step %.2f s.",
		m("automatic push")-m("no push"), m("explicit nix copy step")-m("no push")))
}

// logSpan is the time stamps of a job log's first and last lines.
func logSpan(b *testing.B, log string) (first, last time.Time) {
	b.Helper()
	for line := range strings.Lines(log) {
		stamp, _, _ := strings.Cut(line, " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			continue
		}
		if first.IsZero() {
			first = at
		}
		last = at
	}
	if first.IsZero() {
		b.Fatalf("the job log has no time stamps:\n%s", log)
	}
	return first, last
}
