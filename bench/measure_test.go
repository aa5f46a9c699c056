package bench

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What the benchmarks measure with, and how they summarise it.

// median is the middle sample (the upper one of an even count), or zero
// for none.
func median[T cmp.Ordered](samples []T) T {
	s := slices.Clone(samples)
	slices.Sort(s)
	if len(s) == 0 {
		var zero T
		return zero
	}
	return s[len(s)/2]
}

// procStatusKiB reads a "<field>: N kB" line of /proc/<pid>/status.
func procStatusKiB(b *testing.B, pid int, field string) int64 {
	b.Helper()
	n, ok := statusKiB(pid, field)
	if !ok {
		b.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	return n
}

// rssTree is the resident memory (VmRSS) of a process and its descendants,
// in KiB.
func rssTree(b *testing.B, pid int) int64 {
	return memTree(b, pid, "VmRSS")
}

// memTree sums a /proc/<pid>/status field over a process and its
// descendants, in KiB.
func memTree(b *testing.B, pid int, field string) int64 {
	b.Helper()
	total := procStatusKiB(b, pid, field)
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(children)) {
		if child, err := strconv.Atoi(c); err == nil {
			total += memTree(b, child, field)
		}
	}
	return total
}

// cpuSeconds is the time a process's threads have spent on a CPU, to the
// nanosecond (/proc/<pid>/task/*/schedstat), where /proc/<pid>/stat counts
// 10 ms ticks, too coarse for an idle minute. Threads that have exited are
// not counted; Go programs keep theirs.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		b.Fatalf("reading the CPU time of process %d: no threads found (%v)", pid, err)
	}
	var ns int64
	for _, task := range tasks {
		data, err := os.ReadFile(task)
		if err != nil {
			continue // the thread has just exited
		}
		fields := strings.Fields(string(data))
		if len(fields) == 0 {
			b.Fatalf("%s: unexpected content %q", task, data)
		}
		onCPU, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			b.Fatalf("%s: %v", task, err)
		}
		ns += onCPU
	}
	return float64(ns) / 1e9
}

// cpuTree is cpuSeconds of a process and its descendants, such as nginx's
// workers.
func cpuTree(b *testing.B, pid int) float64 {
	b.Helper()
	total := cpuSeconds(b, pid)
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(children)) {
		if child, err := strconv.Atoi(c); err == nil {
			total += cpuTree(b, child)
		}
	}
	return total
}

// run is what timed measured of a command.
type run struct {
	wall time.Duration
	// rss is the peak resident memory in MiB (VmHWM, read every 10 ms):
	// the process's own memory and the pages of files it mapped and read.
	// getrusage's maxrss would not do: the child of a vfork starts out
	// with the parent's resident set, and Linux keeps the peak across
	// exec.
	rss float64
	// anon is the peak of its anonymous memory in MiB (RssAnon, read every
	// 10 ms): heap and stacks, what the kernel cannot reclaim without
	// swap.
	anon float64
}

// timed runs a command and measures its wall time and memory.
func timed(b *testing.B, env []string, name string, args ...string) run {
	b.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	stop := make(chan struct{})
	peaks := make(chan [2]int64)
	go func() {
		var hwm, anon int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, ok := statusKiB(cmd.Process.Pid, "VmHWM"); ok {
				hwm = max(hwm, v)
			}
			if v, ok := statusKiB(cmd.Process.Pid, "RssAnon"); ok {
				anon = max(anon, v)
			}
			select {
			case <-stop:
				peaks <- [2]int64{hwm, anon}
				return
			case <-tick.C:
			}
		}
	}()
	err := cmd.Wait()
	r := run{wall: time.Since(start)}
	close(stop)
	peak := <-peaks
	r.rss, r.anon = float64(peak[0])/1024, float64(peak[1])/1024
	if err != nil {
		b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return r
}

// statusKiB reads a "<field>: N kB" line of /proc/<pid>/status, if the
// process is there.
func statusKiB(pid int, field string) (int64, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// envInt is a positive integer setting from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// envString is a setting from the environment, or def.
func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
