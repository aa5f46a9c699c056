package caddyrunner

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/cargoxx-pkgs/runner/caddyrunner/actionscache"
)

// giveActionsCache admits the job's runtime token to the configured
// actions cache for as long as the job runs, and returns the variable that
// tells @actions/cache where it is.
func giveActionsCache(task *runnerv1.Task, s *settings, runtimeToken string) (env map[string]string, release func(), err error) {
	access, err := actionscache.Lookup(s.actionsCache)
	if err != nil {
		return nil, nil, err
	}
	release = access.Admit(runtimeToken, actionsCacheScope(task))
	return map[string]string{"ACTIONS_CACHE_URL": access.URL}, release, nil
}

// actionsCacheScope is GitHub's rule for a job's cache entries: they are
// its repository's, stamped with the job's ref (refs/pull/N/head for a pull
// request), and it restores from its own ref, then the default branch.
func actionsCacheScope(task *runnerv1.Task) actionscache.Scope {
	fields := task.GetContext().GetFields()
	ref := fields["ref"].GetStringValue()
	scope := actionscache.Scope{
		Repository: fields["repository"].GetStringValue(),
		WriteRef:   ref,
		ReadRefs:   []string{ref},
	}
	defaultBranch := fields["event"].GetStructValue().GetFields()["repository"].GetStructValue().GetFields()["default_branch"].GetStringValue()
	if defaultBranch != "" && "refs/heads/"+defaultBranch != ref {
		scope.ReadRefs = append(scope.ReadRefs, "refs/heads/"+defaultBranch)
	}
	return scope
}

// actionClonesDir is where the clones of a job's remote actions are kept:
// one directory per Gitea instance and place actions resolve from, so that
// a clone made from one forge (or from the address Gitea had before it
// moved) is never used for a job of another, whose `owner/repo@v1` is a
// different repository.
func actionClonesDir(root, instance, defaultActionsURL string) string {
	digest := sha256.Sum256([]byte(strings.TrimSuffix(instance, "/") + "\x00" + strings.TrimSuffix(defaultActionsURL, "/")))
	return filepath.Join(root, hex.EncodeToString(digest[:12]))
}
