package caddyrunner

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/cargoxx-pkgs/runner/caddynix"
)

// jobNetrcPath is where a job container finds its cache credential.
const jobNetrcPath = "/run/cargoxx/nix-cache.netrc"

// giveCacheAccess hands a job the configured Nix cache: a fresh upload
// credential in a netrc file (bind-mounted read-only into a container job,
// or left on the host for a host job), and NIX_CONFIG naming the cache as
// substituter with its public keys and the netrc file. The returned release
// revokes the credential and removes the file.
func (d *daemon) giveCacheAccess(task *runnerv1.Task, s *settings, runsOn []string, env map[string]string,
	options *string, validVolumes *[]string, rep *reporter) (release func(), err error) {
	access, err := caddynix.LookupCache(s.nixCache)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(access.URL)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("nix_cache %q has an unusable url %q", s.nixCache, access.URL)
	}
	token, revoke := access.IssueJobCredential()
	rep.addMask(token)

	dir := filepath.Join(s.jobFilesDir, strconv.FormatInt(task.Id, 10))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		revoke()
		return nil, fmt.Errorf("creating the job's credential directory: %w", err)
	}
	hostNetrc := filepath.Join(dir, "nix-cache.netrc")
	netrc := fmt.Sprintf("machine %s\nlogin job\npassword %s\n", u.Hostname(), token)
	if err := os.WriteFile(hostNetrc, []byte(netrc), 0o600); err != nil {
		revoke()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("writing the job's netrc file: %w", err)
	}
	release = func() {
		revoke()
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.logger().Warn("removing a job's credential directory")
		}
	}

	netrcPath := hostNetrc
	if s.labels.pickPlatform(runsOn) != hostPlatform {
		netrcPath = jobNetrcPath
		*options = strings.TrimSpace(*options + " --volume " + hostNetrc + ":" + jobNetrcPath + ":ro")
		*validVolumes = append(slices.Clone(*validVolumes), hostNetrc)
	}
	nixConfig := fmt.Sprintf("extra-substituters = %s\nextra-trusted-public-keys = %s\nnetrc-file = %s\n",
		access.URL, strings.Join(access.PublicKeys, " "), netrcPath)
	if existing := env["NIX_CONFIG"]; existing != "" {
		nixConfig = existing + "\n" + nixConfig
	}
	env["NIX_CONFIG"] = nixConfig
	env["CARGOXX_NIX_CACHE_URL"] = access.URL
	return release, nil
}
