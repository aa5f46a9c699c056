package caddyrunner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"gitea.com/gitea/runner/act/model"
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

// keptClonesOnly reports whether the job's remote actions must run from
// the clones kept by earlier jobs: when the place one of them is cloned
// from does not answer and its clone is kept, the job runs rather than
// fails, as it would if act fetched. It returns a line for the job's log
// per action that runs from an old clone. Actions never cloned before are
// cloned as usual.
func keptClonesOnly(ctx context.Context, steps []*model.Step, defaultActionsURL, clonesDir string) (bool, []string) {
	var notes []string
	for _, step := range steps {
		if step.Type() != model.StepTypeUsesActionRemote || strings.Contains(step.Uses, "${{") {
			continue
		}
		if _, err := os.Stat(filepath.Join(clonesDir, step.UsesHash())); err != nil {
			continue
		}
		url, ok := cloneURL(step.Uses, defaultActionsURL)
		if !ok {
			continue
		}
		if err := probeGit(ctx, url); err != nil {
			notes = append(notes, fmt.Sprintf("%s does not answer (%v): %s runs from the copy cloned by an earlier job", url, err, step.Uses))
		}
	}
	return len(notes) > 0, notes
}

// cloneURL is where act clones the action uses from: its own URL when it
// has one (https://host/owner/repo@ref), else owner/repo below the default
// actions URL.
func cloneURL(uses, defaultActionsURL string) (string, bool) {
	base := defaultActionsURL
	for _, scheme := range []string{"https://", "http://"} {
		if rest, ok := strings.CutPrefix(uses, scheme); ok {
			host, path, found := strings.Cut(rest, "/")
			if !found {
				return "", false
			}
			base, uses = scheme+host, path
		}
	}
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "https://" + base
	}
	repo, _, _ := strings.Cut(uses, "@")
	parts := strings.SplitN(repo, "/", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return "", false
	}
	return strings.TrimSuffix(base, "/") + "/" + parts[0] + "/" + parts[1], true
}

// probeGit checks that a git server answers for the repository at url; any
// HTTP answer counts, only a failure to connect does not.
func probeGit(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/info/refs?service=git-upload-pack", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	return nil
}
