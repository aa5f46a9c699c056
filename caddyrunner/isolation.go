package caddyrunner

// What a job may reach of the Caddy that runs it. Caddy's local admin API
// has no authentication: a job that can connect to it can load a
// configuration that serves the cache's signing key. The rules here keep
// every job away from it, and keep code from forks away from the host.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
	"github.com/gobwas/glob"
)

// adminExposure says how the configured jobs could take over Caddy and
// what to change, or "" when they cannot. protected are host paths (the
// admin socket's among them) that no job may be allowed to mount.
func adminExposure(admin caddyutil.AdminEndpoint, labels labelSet, container ContainerConfig, protected []string) string {
	const moveAdmin = "; a job that reaches Caddy's admin API can load a configuration that serves the cache's signing key: " +
		"move the admin endpoint to a unix socket no job gets (global option `admin unix//run/caddy/admin.sock`) or turn it off (`admin off`)"
	var hostLabels []string
	for _, l := range labels {
		if l.schema == "host" {
			hostLabels = append(hostLabels, l.name)
		}
	}
	if admin.NetworkReachable() {
		switch {
		case !admin.LoopbackOnly():
			return fmt.Sprintf("the admin endpoint %s listens beyond loopback, where job containers reach it", admin) + moveAdmin
		case len(hostLabels) > 0:
			return fmt.Sprintf("jobs on the host label(s) %s reach the admin endpoint %s", strings.Join(hostLabels, ", "), admin) + moveAdmin
		case container.Network == "host":
			return fmt.Sprintf("job containers on the host network reach the admin endpoint %s", admin) + moveAdmin
		}
	}
	if container.DockerHost != "-" && container.DockerHost != "" {
		return fmt.Sprintf("jobs get the Docker socket %s, and through it the whole host: remove container docker_host", container.DockerHost)
	}
	if container.Privileged {
		return "privileged job containers can reach the whole host: remove container privileged"
	}
	for _, path := range protected {
		if pattern, ok := volumeExposing(container.ValidVolumes, path); ok {
			return fmt.Sprintf("container valid_volumes %s lets a job mount %s, which is Caddy's: narrow the pattern", pattern, path)
		}
	}
	return ""
}

// adminRefusal is the provisioning error for a configuration that lets
// jobs take over Caddy.
func adminRefusal(exposure string) error {
	return fmt.Errorf("gitea_runner: %s; or, if every job this runner takes is trusted code, add `trusted_jobs`", exposure)
}

// volumeExposing returns the valid_volumes pattern that lets a job mount
// path or a directory above it.
func volumeExposing(validVolumes []string, path string) (string, bool) {
	if path == "" {
		return "", false
	}
	path = filepath.Clean(path)
	for _, pattern := range validVolumes {
		if pattern == "**" {
			return pattern, true
		}
		if !filepath.IsAbs(pattern) {
			continue // a named volume, not a host path
		}
		g, err := glob.Compile(filepath.Clean(pattern), '/')
		if err != nil {
			continue
		}
		for dir := path; ; dir = filepath.Dir(dir) {
			if g.Match(dir) {
				return pattern, true
			}
			if dir == "/" {
				break
			}
		}
	}
	return "", false
}

// untrustedRefusal is why a task must not run as configured, or "": code
// from someone else's fork never runs on the host, on the host's network,
// privileged or with the Docker socket, any of which reaches what the
// runner protects.
func untrustedRefusal(task *runnerv1.Task, s *settings, runsOn []string) string {
	if !forkPullRequest(task) {
		return ""
	}
	const why = "this job runs a pull request from a fork, and jobs from forks never run with access to the runner's host: "
	switch {
	case s.labels.pickPlatform(runsOn) == hostPlatform:
		return why + fmt.Sprintf("its runs-on %v picks a host label; run it on a docker:// label", runsOn)
	case s.container.Network == "host":
		return why + "job containers use the host network (container network host)"
	case s.container.Privileged:
		return why + "job containers are privileged (container privileged)"
	case s.container.DockerHost != "-" && s.container.DockerHost != "":
		return why + "job containers get the Docker socket (container docker_host)"
	}
	return ""
}

// passedToHostJobs are the variables of Caddy's own environment that a
// job on a host label keeps: what a shell needs, nothing that could be a
// credential. Add others with `env`.
var passedToHostJobs = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}

// hideCaddyEnv blanks, in a host job's environment, every variable of
// Caddy's own environment that the job is not meant to have: act hands a
// host job the whole environment of the process that runs it, which holds
// the tokens a Caddyfile reads with {env.*}.
func hideCaddyEnv(env map[string]string) {
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, set := env[name]; set || slices.Contains(passedToHostJobs, name) || strings.HasPrefix(name, "LC_") {
			continue
		}
		env[name] = ""
	}
}
