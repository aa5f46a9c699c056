package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// The serving benchmarks load the servers with wrk, a small C client, on a
// CPU of its own, while every server runs on the other (serverCPU): the
// client is never what limits the figures, and each server gets the same
// one core.
const (
	serverCPU = "0"
	clientCPU = "1"
)

// loadNote says how the serving benchmarks load the servers.
const loadNote = "The load generator is wrk on one CPU; every server runs on the other (taskset)."

// loadResult is what a load run measured.
type loadResult struct {
	requests int
	bytes    int64
	elapsed  time.Duration
	p50, p99 time.Duration
}

// wrkScript requests the paths listed in the file PATHS in turn and prints
// what it measured on one line.
const wrkScript = `
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format("WRK %%d %%d %%d %%d %%d %%d %%d\n", summary.requests, summary.bytes, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
`

// load requests the paths in turn over conns keep-alive connections for
// dur with wrk, and fails the benchmark on any error or non-2xx answer.
func load(b *testing.B, base string, paths []string, conns int, dur time.Duration, headers ...string) loadResult {
	b.Helper()
	wrk := harness.LookTool(b, "wrk")
	dir := b.TempDir()
	list := filepath.Join(dir, "paths")
	if err := os.WriteFile(list, []byte(strings.Join(paths, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	script := filepath.Join(dir, "load.lua")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(wrkScript, list)), 0o644); err != nil {
		b.Fatal(err)
	}
	args := []string{"-c", clientCPU, wrk, "-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(dur.Seconds())), "--timeout", "10s", "-s", script}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, err := exec.Command(harness.LookTool(b, "taskset"), append(args, base)...).CombinedOutput()
	if err != nil {
		b.Fatalf("wrk against %s: %v\n%s", base, err, out)
	}
	var r loadResult
	var durationUs, p50, p99, badStatus, socketErrors int64
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "WRK "); ok {
			if _, err := fmt.Sscan(rest, &r.requests, &r.bytes, &durationUs, &p50, &p99, &badStatus, &socketErrors); err != nil {
				b.Fatalf("reading wrk's summary %q: %v", line, err)
			}
		}
	}
	switch {
	case r.requests == 0:
		b.Fatalf("wrk against %s made no request:\n%s", base, out)
	case badStatus > 0 || socketErrors > 0:
		b.Fatalf("wrk against %s: %d answers were not 2xx or 3xx, %d socket errors:\n%s", base, badStatus, socketErrors, out)
	}
	r.elapsed = time.Duration(durationUs) * time.Microsecond
	r.p50, r.p99 = time.Duration(p50)*time.Microsecond, time.Duration(p99)*time.Microsecond
	return r
}

// pinnedCaddy is a script that runs the caddy binary on serverCPU, for
// harness.CaddyOptions.Binary.
func pinnedCaddy(b *testing.B, binary string) string {
	b.Helper()
	script := filepath.Join(b.TempDir(), "caddy-on-cpu-"+serverCPU)
	content := fmt.Sprintf("#!/bin/sh\nexec %s -c %s %s \"$@\"\n", harness.LookTool(b, "taskset"), serverCPU, binary)
	if err := os.WriteFile(script, []byte(content), 0o755); err != nil {
		b.Fatal(err)
	}
	return script
}
