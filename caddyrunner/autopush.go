package caddyrunner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"gitea.com/gitea/runner/act/model"
	"github.com/dustin/go-humanize"
	"github.com/nix-community/go-nix/pkg/storepath"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v4"
)

// Automatic push: every path a job's Nix builds goes to the cache with the
// job's own credential. A container job's store is watched from inside
// its container by the auto-push agent while the job runs, and what is
// left is pushed after its steps, whether they succeeded or not
// (storewatch.go, agent.go, pushagent.go).
//
// A host job's Nix shares the host's store with everything else on the
// host, so what the job built is told by Nix itself: a post-build-hook
// notes each build in a queue file and returns, since Nix waits for it;
// the last step pushes what was noted with `nix copy`, which asks the
// cache first and uploads only what it lacks. The hook never talks to
// the runner, so nothing the runner does can hold up a build.
//
// Either way the runner then writes the summary line.

const (
	autoPushOn       = "on"
	autoPushOff      = "off"
	autoPushRequired = "required"
)

// jobAutoPushDir is where a container job finds its auto-push directory.
const jobAutoPushDir = "/run/cargoxx/auto-push"

// The files of the auto-push directory.
const (
	autoPushHookFile    = "post-build-hook"
	autoPushNixConfFile = "nix.conf"
	autoPushScriptFile  = "push"
	autoPushQueueFile   = "queue"
	autoPushPathsFile   = "paths"
	autoPushStartedFile = "started"
	autoPushResultFile  = "result"
	autoPushErrorFile   = "error"
)

// autoPushHook is Nix's post-build-hook. It must always succeed, quickly:
// a failing hook fails the build. Nix 2.8.0 leaves OUT_PATHS empty, so the
// derivation goes into the queue too.
const autoPushHook = `#!/bin/sh
# Nix runs this after each build and waits for it: it only notes what was
# built, for the job's last step to push to the Nix cache.
printf '%s %s\n' "$DRV_PATH" "$OUT_PATHS" >> DIR/queue 2>/dev/null
exit 0
`

// autoPushScript is the job's last step.
const autoPushScript = `#!/bin/sh
# Pushes to the Nix cache what this job's Nix built, as noted by the
# post-build-hook. nix copy asks the cache first and uploads only what it
# lacks, with the closure of each path.
dir=DIR
: > "$dir/started"
[ -s "$dir/queue" ] || exit 0
unset OUT_PATHS DRV_PATH
while read -r drv outs; do
	if [ -z "$outs" ]; then
		outs=$(nix-store --query --outputs "$drv" 2>/dev/null) || continue
	fi
	for p in $outs; do
		[ -e "$p" ] && echo "$p"
	done
done < "$dir/queue" | sort -u > "$dir/paths"
set -- $(cat "$dir/paths")
[ $# -gt 0 ] || exit 0
echo "pushing the $# paths this job's Nix built to $CARGOXX_NIX_CACHE_URL"
nix --extra-experimental-features nix-command copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL" "$@" 2> "$dir/error"
status=$?
echo "$status" > "$dir/result"
if [ "$status" -ne 0 ]; then
	cat "$dir/error" >&2
	[ REQUIRED = 1 ] && exit "$status"
fi
exit 0
`

// autoPush is one job's automatic push.
type autoPush struct {
	// hostDir holds the scripts and what they write; jobDir is the same
	// directory as the job sees it.
	hostDir, jobDir string
	cacheURL        string
	required        bool
	// watched is whether the auto-push agent watches the job's store;
	// otherwise the job's Nix runs the hook.
	watched bool
	// agentPath is the auto-push agent on the host, mounted at
	// jobAgentPath in a watched job's container.
	agentPath string
	// uploadURL and token are where and how the watch uploads.
	uploadURL, token string
	// watch is the container job's store watch, once started.
	watch *storeWatch
	// stored reports what the job's credential stored in the cache.
	stored func() (paths []string, narBytes int64)
}

// prepareAutoPush makes the auto-push directory in the job's credential
// directory: for a container job it is bind-mounted at jobAutoPushDir. A
// container job's store is watched by the agent at agentPath, when there
// is one; any other job's Nix runs the hook.
func prepareAutoPush(jobFiles string, container bool, agentPath, mode, cacheURL, uploadURL, token string, stored func() ([]string, int64)) (*autoPush, error) {
	watched := container && agentPath != ""
	p := &autoPush{
		hostDir: filepath.Join(jobFiles, "auto-push"), cacheURL: cacheURL, required: mode == autoPushRequired,
		watched: watched, agentPath: agentPath, uploadURL: uploadURL, token: token, stored: stored,
	}
	p.jobDir = p.hostDir
	perm := os.FileMode(0o700)
	if container {
		p.jobDir = jobAutoPushDir
		if !watched {
			// The hook writes here as the job's user, who may be
			// anyone; the credential directory around it keeps
			// everyone else on the host out.
			perm = 0o777
		}
	}
	if err := os.Mkdir(p.hostDir, perm); err != nil {
		return nil, fmt.Errorf("creating the job's auto-push directory: %w", err)
	}
	if err := os.Chmod(p.hostDir, perm); err != nil {
		return nil, fmt.Errorf("creating the job's auto-push directory: %w", err)
	}
	required := "0"
	if p.required {
		required = "1"
	}
	files := map[string]string{
		autoPushHookFile:    strings.ReplaceAll(autoPushHook, "DIR", shellQuote(p.jobDir)),
		autoPushScriptFile:  strings.NewReplacer("DIR", shellQuote(p.jobDir), "REQUIRED", required).Replace(autoPushScript),
		autoPushNixConfFile: p.hookConfig(),
	}
	if watched {
		// Empty: mounted into the job container, it tells that
		// container from the job's other containers.
		return p, nil
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(p.hostDir, name), []byte(content), 0o755); err != nil {
			return nil, fmt.Errorf("writing the job's %s: %w", name, err)
		}
	}
	return p, nil
}

// nixConfig is the job's NIX_CONFIG line that installs the hook. It goes
// through an optional include of the directory's nix.conf, because
// NIX_CONFIG also reaches the containers of `uses: docker://` steps, which
// do not have the directory, and Nix fails every build whose hook is
// missing: there, Nix skips the include and builds without the hook. Nix
// cannot include a path with white space in it; such a host directory
// names the hook directly.
func (p *autoPush) nixConfig() string {
	if p.watched {
		return ""
	}
	if strings.ContainsFunc(p.jobDir, unicode.IsSpace) {
		return p.hookConfig()
	}
	return "!include " + p.jobDir + "/" + autoPushNixConfFile + "\n"
}

// hookConfig is the Nix setting that runs the hook.
func (p *autoPush) hookConfig() string {
	return "post-build-hook = " + p.jobDir + "/" + autoPushHookFile + "\n"
}

// step is the last step of a job running the hook: it runs even after a
// failed step, and unless the push is required nothing in it (not even an
// image without a shell) fails the job.
func (p *autoPush) step() *model.Step {
	return &model.Step{
		ID:                 "cargoxx-auto-push",
		Name:               "Push what Nix built to the cache",
		If:                 yaml.Node{Kind: yaml.ScalarNode, Value: "always()"},
		Run:                shellQuote(p.jobDir + "/" + autoPushScriptFile),
		Shell:              "sh",
		RawContinueOnError: strconv.FormatBool(!p.required),
	}
}

// autoPushOutcome is what a job's automatic push did.
type autoPushOutcome struct {
	// built are the paths the job's Nix built that still existed.
	built []string
	// pushed are the paths the job's credential stored, built here or
	// in their closures; narBytes their NAR sizes.
	pushed   []string
	narBytes int64
	// skipped are the built paths not pushed because the cache had them.
	skipped []string
	// failure says why nix copy failed; empty when it succeeded.
	failure string
	took    time.Duration
}

// outcome is what the push did. It returns nil when the job's Nix built
// nothing (or the job has no Nix).
func (p *autoPush) outcome() (*autoPushOutcome, error) {
	if p.watch != nil {
		o := p.watch.finish()
		if len(o.built) == 0 && o.failure == "" {
			return nil, nil
		}
		o.pushed, o.narBytes = p.stored()
		return o, nil
	}
	if p.watched {
		return &autoPushOutcome{failure: "the job's store was not watched"}, nil
	}
	return p.hookOutcome()
}

// hookOutcome reads what the last step of a job running the hook left. The directory is
// the job's to write, so nothing in it is followed or trusted beyond its
// shape.
func (p *autoPush) hookOutcome() (*autoPushOutcome, error) {
	built, err := p.readLines(autoPushPathsFile, 8<<20)
	if err != nil || len(built) == 0 {
		return nil, err
	}
	built = slices.DeleteFunc(built, func(path string) bool { return !validStorePath(path) })
	o := &autoPushOutcome{built: built}
	o.pushed, o.narBytes = p.stored()
	result, err := p.readLines(autoPushResultFile, 64)
	switch {
	case err != nil || len(result) != 1:
		o.failure = "the push did not finish (the job was cut short?)"
	case result[0] != "0":
		o.failure = "nix copy exited " + result[0]
		if lines, _ := p.readLines(autoPushErrorFile, 64<<10); len(lines) > 0 {
			// Nix's own error line, rather than the response body it
			// prints after it.
			reason := lines[len(lines)-1]
			if i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "error:") }); i >= 0 {
				reason = lines[i]
			}
			o.failure += ": " + truncate(reason, 300)
		}
	}
	for _, path := range built {
		if !slices.Contains(o.pushed, path) && o.failure == "" {
			o.skipped = append(o.skipped, path)
		}
	}
	if started, err := p.modTime(autoPushStartedFile); err == nil {
		if ended, err := p.modTime(autoPushResultFile); err == nil && ended.After(started) {
			o.took = ended.Sub(started)
		}
	}
	return o, nil
}

// summary is the job log's one line about the automatic push.
func (o *autoPushOutcome) summary(cacheURL string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "auto push to %s: %d built paths; pushed %d paths (%s of NAR) in %.1f s",
		cacheURL, len(o.built), len(o.pushed), humanize.IBytes(uint64(o.narBytes)), o.took.Seconds())
	if len(o.pushed) > 0 && len(o.pushed) <= 10 {
		fmt.Fprintf(&b, " (%s)", strings.Join(o.pushed, ", "))
	}
	fmt.Fprintf(&b, "; %d skipped, the cache had them", len(o.skipped))
	if o.failure != "" {
		notPushed := 0
		for _, path := range o.built {
			if !slices.Contains(o.pushed, path) {
				notPushed++
			}
		}
		fmt.Fprintf(&b, "; NOT PUSHED: %d built paths, %s", notPushed, o.failure)
	}
	return b.String()
}

// startWatch starts watching a container job's store; it must be called
// before the job's container starts, and ends with ctx.
func (p *autoPush) startWatch(ctx context.Context, logger *zap.Logger) error {
	if !p.watched {
		return nil
	}
	w, err := startStoreWatch(ctx, p, logger)
	p.watch = w
	return err
}

// report writes the summary line into the job's log and counts the
// paths in the metrics. It reports whether everything built was pushed.
func (p *autoPush) report(rep *reporter, repository string) bool {
	o, err := p.outcome()
	if err != nil {
		rep.logf("auto push to %s: %v", p.cacheURL, err)
		return false
	}
	if o == nil {
		return true
	}
	rep.logf("%s", o.summary(p.cacheURL))
	autoPushFailures.WithLabelValues(repository)
	autoPushPaths.WithLabelValues(repository, "pushed").Add(float64(len(o.pushed)))
	autoPushPaths.WithLabelValues(repository, "skipped").Add(float64(len(o.skipped)))
	if o.failure != "" {
		autoPushFailures.WithLabelValues(repository).Inc()
	}
	return o.failure == ""
}

// readLines reads a file of the directory, refusing links and anything
// larger than limit.
func (p *autoPush) readLines(name string, limit int64) ([]string, error) {
	f, err := os.OpenFile(filepath.Join(p.hostDir, name), os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the job's auto-push %s: %w", name, err)
	}
	defer func() { _ = f.Close() }()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("the job's auto-push %s is not a regular file", name)
	}
	var lines []string
	scanner := bufio.NewScanner(io.LimitReader(f, limit))
	for scanner.Scan() {
		if line := strings.TrimSpace(scanner.Text()); line != "" {
			lines = append(lines, line)
		}
	}
	return lines, scanner.Err()
}

func (p *autoPush) modTime(name string) (time.Time, error) {
	fi, err := os.Lstat(filepath.Join(p.hostDir, name))
	if err != nil {
		return time.Time{}, err
	}
	return fi.ModTime(), nil
}

// validStorePath reports whether path is a store path.
func validStorePath(path string) bool {
	_, err := storepath.FromAbsolutePath(path)
	return err == nil
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
