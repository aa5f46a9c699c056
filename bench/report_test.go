package bench

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// comparison is one measured quantity for several contenders, measured
// alternately in the same run.
type comparison struct {
	name    string
	unit    string
	better  string // "higher" or "lower"
	samples map[string][]float64
	order   []string
	goal    string
	// holds, given the medians, says whether the goal holds.
	holds func(median map[string]float64) bool
	// more are further goals, each with its own verdict.
	more  []goal
	notes []string
}

// goal is a goal of a comparison and what says whether it holds.
type goal struct {
	text  string
	holds func(median map[string]float64) bool
}

// addGoal gives the comparison one more goal, reported with its own
// verdict.
func (c *comparison) addGoal(text string, holds func(median map[string]float64) bool) {
	c.more = append(c.more, goal{text, holds})
}

var (
	resultsMu sync.Mutex
	results   []*comparison
)

func newComparison(name, unit, better, goal string) *comparison {
	c := &comparison{name: name, unit: unit, better: better, goal: goal, samples: map[string][]float64{}}
	resultsMu.Lock()
	results = append(results, c)
	resultsMu.Unlock()
	return c
}

func (c *comparison) add(contender string, v float64) {
	if _, ok := c.samples[contender]; !ok {
		c.order = append(c.order, contender)
	}
	c.samples[contender] = append(c.samples[contender], v)
}

// pairedNote says, round by round, how ours compared with theirs: the
// median of the rounds' ratios and in how many rounds ours was the better,
// which the machine's noise, shared by both in a round, moves less than
// the ratio of the medians.
func (c *comparison) pairedNote(ours, theirs string) string {
	a, b := c.samples[ours], c.samples[theirs]
	n := min(len(a), len(b))
	ratios := make([]float64, n)
	better := 0
	for i := range n {
		ratios[i] = a[i] / b[i]
		if (c.better == "lower" && a[i] < b[i]) || (c.better == "higher" && a[i] > b[i]) {
			better++
		}
	}
	return fmt.Sprintf("Round by round, the ratio of %s to %s: median %.3fx, spread %.3f–%.3f; %s was the better in %d of %d rounds.",
		ours, theirs, median(ratios), slices.Min(ratios), slices.Max(ratios), ours, better, n)
}

// ratioAtLeast is a goal: ours is at least factor times theirs.
func ratioAtLeast(ours, theirs string, factor float64) func(map[string]float64) bool {
	return func(m map[string]float64) bool { return m[ours] >= factor*m[theirs] }
}

// ratioAtMost is a goal: ours is at most factor times theirs.
func ratioAtMost(ours, theirs string, factor float64) func(map[string]float64) bool {
	return func(m map[string]float64) bool { return m[ours] <= factor*m[theirs] }
}

// TestMain writes BENCHMARKS.md when benchmarks recorded results.
func TestMain(m *testing.M) {
	code := m.Run()
	if len(results) > 0 {
		if err := writeReport(); err != nil {
			fmt.Fprintln(os.Stderr, "writing the benchmark report:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// reportPath is where the report goes: BENCH_REPORT, or BENCHMARKS.md at
// the repository's root. A run of some of the benchmarks (-bench Narinfo)
// can write elsewhere and leave the full report alone.
func reportPath() string {
	if p := os.Getenv("BENCH_REPORT"); p != "" {
		return p
	}
	return filepath.Join("..", "BENCHMARKS.md")
}

func writeReport() error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\nWritten by `make bench` on %s. Each comparison runs the contenders alternately in the same run, so drift between runs cancels out; the table gives the median, the spread (min–max) over the rounds, and the ratio of each median to the first contender's.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	host, _ := os.Hostname()
	cpu := "unknown"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	fmt.Fprintf(&b, "Machine: %s, %d CPUs (%s), %s/%s, %s.\n\n", host, runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Fprintf(&b, "Versions: caddy v2.11.9 with this bundle (bin/caddy); %s; Gitea v1.26.0; Gitea's runner v1.0.8; %s.\n\n", versionOf("nginx", "-v"), versionOf("nix", "--version"))
	fmt.Fprintf(&b, "Command: `make bench` (`go test -run '^$' -bench '%s' -benchtime 1x ./bench`).\n\n", flag.Lookup("test.bench").Value)
	for _, c := range results {
		fmt.Fprintf(&b, "## %s\n\n", c.name)
		medians := map[string]float64{}
		for who, vs := range c.samples {
			medians[who] = median(vs)
		}
		goals := c.more
		if c.goal != "" {
			goals = append([]goal{{c.goal, c.holds}}, goals...)
		}
		for _, g := range goals {
			verdict := ""
			if g.holds != nil {
				verdict = " Holds: **no**."
				if g.holds(medians) {
					verdict = " Holds: yes."
				}
			}
			fmt.Fprintf(&b, "Goal: %s.%s\n\n", g.text, verdict)
		}
		fmt.Fprintf(&b, "| contender | median (%s) | spread | rounds | ratio to %s |\n|---|---|---|---|---|\n", c.unit, c.order[0])
		base := median(c.samples[c.order[0]])
		for _, who := range c.order {
			vs := c.samples[who]
			fmt.Fprintf(&b, "| %s | %.4g | %.4g–%.4g | %d | %.3f |\n", who, median(vs), slices.Min(vs), slices.Max(vs), len(vs), median(vs)/base)
		}
		fmt.Fprintf(&b, "\n%s is better.", strings.ToUpper(c.better[:1])+c.better[1:])
		for _, n := range c.notes {
			fmt.Fprintf(&b, " %s", n)
		}
		b.WriteString("\n\n")
	}
	return os.WriteFile(reportPath(), []byte(b.String()), 0o644)
}

func versionOf(cmd string, arg string) string {
	out, err := exec.Command(cmd, arg).CombinedOutput()
	if err != nil {
		return cmd + " (not installed)"
	}
	return strings.TrimSpace(strings.Split(string(out), "\n")[0])
}
