package caddyrunner

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/cargoxx-pkgs/runner/caddynix"
	"go.uber.org/zap"
)

// jobNetrcPath is where a job container finds its cache credential.
const jobNetrcPath = "/run/cargoxx/nix-cache.netrc"

// cacheHandoff is what a job gets of the configured Nix cache, for
// execute to apply.
type cacheHandoff struct {
	// nixConfig names the cache as substituter, its keys, and for jobs that
	// may upload the netrc file; it joins the job's NIX_CONFIG.
	nixConfig string
	// env are the CARGOXX_NIX_CACHE_* variables.
	env map[string]string
	// mount is the host's netrc file, to bind read-only at jobNetrcPath in
	// a container job; empty for host jobs and jobs without a credential.
	mount string
	// release revokes the credential, records the job's outcome with the
	// cache and removes the netrc file.
	release func(succeeded bool)
	// autoPush pushes what the job's Nix builds; nil when it is off or
	// the job may not push.
	autoPush *autoPush
}

// giveCacheAccess hands a job the configured Nix cache: NIX_CONFIG naming
// the cache as a substituter with its public keys, and, but for a fork's
// pull request, a fresh upload credential in a netrc file (bind-mounted
// read-only into a container job, or left on the host for a host job, which
// also gets a cache directory of its own for Nix's narinfo cache).
func (d *daemon) giveCacheAccess(task *runnerv1.Task, s *settings, runsOn []string, rep *reporter) (*cacheHandoff, error) {
	access, err := caddynix.LookupCache(s.nixCache)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(access.URL)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("nix_cache %q has an unusable url %q", s.nixCache, access.URL)
	}
	if forkPullRequest(task) {
		// Everything uploaded is signed with the cache's key, so code from
		// someone else's fork may read the cache but not write to it, as
		// Gitea gives such jobs no secrets.
		rep.logf("this job runs a pull request from a fork: it may substitute from the Nix cache %s but gets no upload credential", access.URL)
		return &cacheHandoff{
			nixConfig: substituterConfig(access.URL, access.PublicKeys),
			env:       map[string]string{"CARGOXX_NIX_CACHE_URL": access.URL},
			release:   func(bool) {},
		}, nil
	}
	cred, finish := access.IssueJobCredential(cacheJob(task, d.instance), s.keepRuns)
	rep.addMask(cred.Token)
	if cred.Overlay != "" {
		rep.logf("what this job pushes to the Nix cache %s goes to the overlay of %s: this ref's jobs substitute it, the default branch and everyone else never see it", access.URL, cred.Overlay)
	}

	dir := filepath.Join(s.jobFilesDir, strconv.FormatInt(task.Id, 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		finish(false)
		return nil, fmt.Errorf("creating the job's credential directory: %w", err)
	}
	hostNetrc := filepath.Join(dir, "nix-cache.netrc")
	netrc := fmt.Sprintf("machine %s\nlogin job\npassword %s\n", u.Hostname(), cred.Token)
	if err := os.WriteFile(hostNetrc, []byte(netrc), 0o600); err != nil {
		finish(false)
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("writing the job's netrc file: %w", err)
	}
	handoff := &cacheHandoff{
		env: map[string]string{
			"CARGOXX_NIX_CACHE_URL": access.URL,
			// Uploads go to the cache's upload URL, so that Nix's lookup
			// cache on a machine that uploads (a host job's HOME is
			// Caddy's) never holds the unsigned narinfo it sent under the
			// substituter's URL.
			"CARGOXX_NIX_CACHE_UPLOAD_URL": strings.TrimSuffix(access.URL, "/") + "/upload",
		},
		release: func(succeeded bool) {
			finish(succeeded)
			if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				d.logger().Warn("removing a job's credential directory", zap.String("dir", dir), zap.Error(err))
			}
		},
	}
	netrcPath := hostNetrc
	container := s.labels.pickPlatform(runsOn) != hostPlatform
	if container {
		netrcPath, handoff.mount = jobNetrcPath, hostNetrc
	} else {
		// Host jobs share Caddy's HOME, and Nix remembers every narinfo it
		// looks up there for a month: one job's answers, which its
		// credential decides, must not be what the next job substitutes.
		// A container job starts with a cache of its own anyway.
		cacheHome := filepath.Join(dir, "cache")
		if err := os.Mkdir(cacheHome, 0o700); err != nil {
			handoff.release(false)
			return nil, fmt.Errorf("creating the job's cache directory: %w", err)
		}
		handoff.env["XDG_CACHE_HOME"] = cacheHome
	}
	handoff.nixConfig = substituterConfig(access.URL, cred.PublicKeys) + "netrc-file = " + netrcPath + "\n"
	if s.autoPush != autoPushOff {
		var agentPath string
		if container {
			agentPath = d.pushAgent(s)
		}
		push, err := prepareAutoPush(dir, container, agentPath, s.autoPush, access.URL, handoff.env["CARGOXX_NIX_CACHE_UPLOAD_URL"], cred.Token, cred.Stored)
		if err != nil {
			handoff.release(false)
			return nil, err
		}
		handoff.autoPush = push
		handoff.nixConfig += push.nixConfig()
	}
	return handoff, nil
}

// substituterConfig is the nix.conf that makes a job substitute from the
// cache at url, trusting keys.
func substituterConfig(url string, keys []string) string {
	return fmt.Sprintf("extra-substituters = %s\nextra-trusted-public-keys = %s\n", url, strings.Join(keys, " "))
}

// cacheJob describes a task for the cache's records: its repository, run
// and commit, and whether it runs on the default branch or for a pull
// request.
func cacheJob(task *runnerv1.Task, instance string) *caddynix.Job {
	fields := task.GetContext().GetFields()
	str := func(name string) string { return fields[name].GetStringValue() }
	event := str("event_name")
	repository := str("repository")
	defaultBranch := fields["event"].GetStructValue().GetFields()["repository"].GetStructValue().GetFields()["default_branch"].GetStringValue()
	pullRequest := strings.HasPrefix(event, "pull_request")
	job := &caddynix.Job{
		Repository:    repository,
		RunID:         str("run_id"),
		JobName:       str("job"),
		Commit:        str("sha"),
		Ref:           str("ref"),
		Event:         event,
		PullRequest:   pullRequest,
		DefaultBranch: !pullRequest && defaultBranch != "" && str("ref") == "refs/heads/"+defaultBranch,
		RunURL:        runURL(instance, repository, str("run_id")),
	}
	return job
}

// joinNixConfig appends settings to a job's NIX_CONFIG, keeping what the
// job's env already set.
func joinNixConfig(existing, settings string) string {
	if existing == "" {
		return settings
	}
	return existing + "\n" + settings
}

// forkPullRequest reports whether a task runs code from a pull request
// whose head is in another repository, the jobs Gitea gives no secrets:
// every pull_request* event but pull_request_target, which runs the base
// repository's workflow.
func forkPullRequest(task *runnerv1.Task) bool {
	fields := task.GetContext().GetFields()
	event := fields["event_name"].GetStringValue()
	if !strings.HasPrefix(event, "pull_request") || event == "pull_request_target" {
		return false
	}
	pr := fields["event"].GetStructValue().GetFields()["pull_request"].GetStructValue().GetFields()
	head := pr["head"].GetStructValue().GetFields()["repo"].GetStructValue().GetFields()["full_name"].GetStringValue()
	base := pr["base"].GetStructValue().GetFields()["repo"].GetStructValue().GetFields()["full_name"].GetStringValue()
	// Without both names it cannot be told apart, so it counts as a fork.
	return head == "" || base == "" || head != base
}
