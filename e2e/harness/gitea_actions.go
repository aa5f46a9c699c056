package harness

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
)

// CreateRepo creates a repository owned by the administrator, initialised
// with a README on branch main.
func (g *Gitea) CreateRepo(name string) *gitea.Repository {
	g.t.Helper()
	repo, _, err := g.Client.CreateRepo(gitea.CreateRepoOption{
		Name:          name,
		AutoInit:      true,
		DefaultBranch: "main",
		Readme:        "Default",
	})
	if err != nil {
		g.t.Fatalf("creating repository %s: %v", name, err)
	}
	return repo
}

// CommitWorkflow commits a workflow file to .gitea/workflows/ on main
// through the contents API; the push queues a run. It returns the commit SHA.
func (g *Gitea) CommitWorkflow(repo, file, content string) string {
	g.t.Helper()
	resp, _, err := g.Client.CreateFile(GiteaAdmin, repo, ".gitea/workflows/"+file, gitea.CreateFileOptions{
		FileOptions: gitea.FileOptions{Message: "add workflow " + file, BranchName: "main"},
		Content:     base64.StdEncoding.EncodeToString([]byte(content)),
	})
	if err != nil {
		g.t.Fatalf("committing workflow %s to %s: %v", file, repo, err)
	}
	return resp.Commit.SHA
}

// RepoRegistrationToken mints a runner registration token for one repository.
func (g *Gitea) RepoRegistrationToken(repo string) string {
	g.t.Helper()
	token, _, err := g.Client.CreateRepoActionRunnerRegistrationToken(GiteaAdmin, repo)
	if err != nil {
		g.t.Fatalf("minting a registration token for %s: %v", repo, err)
	}
	return token.Token
}

// SetSecret creates or updates a repository's Actions secret.
func (g *Gitea) SetSecret(repo, name, value string) {
	g.t.Helper()
	if _, err := g.Client.CreateRepoActionSecret(GiteaAdmin, repo, name, gitea.CreateOrUpdateSecretOption{Data: value}); err != nil {
		g.t.Fatalf("setting secret %s on %s: %v", name, repo, err)
	}
}

// SetVariable creates a repository's Actions variable.
func (g *Gitea) SetVariable(repo, name, value string) {
	g.t.Helper()
	if _, err := g.Client.CreateRepoActionVariable(GiteaAdmin, repo, name, value); err != nil {
		g.t.Fatalf("setting variable %s on %s: %v", name, repo, err)
	}
}

// Runs lists a repository's workflow runs, newest first.
func (g *Gitea) Runs(repo string) ([]*gitea.ActionWorkflowRun, error) {
	resp, _, err := g.Client.ListRepoActionRuns(GiteaAdmin, repo, gitea.ListRepoActionRunsOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing runs of %s: %w", repo, err)
	}
	return resp.WorkflowRuns, nil
}

// RunStatus is a run's or job's status as the REST API reports it: status is
// queued, waiting, in_progress or completed; conclusion (once completed) is
// success, failure, cancelled or skipped.
type RunStatus struct {
	Status     string
	Conclusion string
}

// WaitRun waits until the repository has a run for commit sha whose status
// satisfies done, and returns it. It fails the test after timeout, naming the
// last status seen.
func (g *Gitea) WaitRun(repo, sha string, timeout time.Duration, done func(RunStatus) bool) *gitea.ActionWorkflowRun {
	g.t.Helper()
	var found *gitea.ActionWorkflowRun
	err := Eventually(timeout, 250*time.Millisecond, func() error {
		runs, err := g.Runs(repo)
		if err != nil {
			return err
		}
		for _, run := range runs {
			if run.HeadSha != sha {
				continue
			}
			found = run
			if done(RunStatus{Status: run.Status, Conclusion: run.Conclusion}) {
				return nil
			}
			return fmt.Errorf("run %d is %s/%s", run.ID, run.Status, run.Conclusion)
		}
		return fmt.Errorf("no run for commit %s yet", sha)
	})
	if err != nil {
		g.t.Fatalf("waiting for the run of %s in %s: %v", sha, repo, err)
	}
	return found
}

// Queued is a WaitRun condition: the run exists and waits for a runner.
func Queued(s RunStatus) bool { return s.Status == "queued" }

// Completed is a WaitRun condition: the run has finished, whatever its
// conclusion.
func Completed(s RunStatus) bool { return s.Status == "completed" }

// SucceededLog returns the log of the first job of run, and fails the
// test, with that log, unless the run succeeded.
func (g *Gitea) SucceededLog(repo string, run *gitea.ActionWorkflowRun) string {
	g.t.Helper()
	log := g.JobLog(repo, g.Jobs(repo, run.ID)[0].ID)
	if run.Conclusion != "success" {
		g.t.Fatalf("run %d (%s, %s) in %s concluded %q:\n%s", run.ID, run.Event, run.HeadSha, repo, run.Conclusion, log)
	}
	return log
}

// Jobs lists the jobs of a run.
func (g *Gitea) Jobs(repo string, runID int64) []*gitea.ActionWorkflowJob {
	g.t.Helper()
	resp, _, err := g.Client.ListRepoActionRunJobs(GiteaAdmin, repo, runID, gitea.ListRepoActionJobsOptions{})
	if err != nil {
		g.t.Fatalf("listing jobs of run %d in %s: %v", runID, repo, err)
	}
	return resp.Jobs
}

// JobLog returns a job's log as plain text.
func (g *Gitea) JobLog(repo string, jobID int64) string {
	g.t.Helper()
	data, _, err := g.Client.GetRepoActionJobLogs(GiteaAdmin, repo, jobID)
	if err != nil {
		g.t.Fatalf("reading the log of job %d in %s: %v", jobID, repo, err)
	}
	return string(data)
}

// CancelRun cancels a run the way the web UI does. Gitea 1.26 has no REST
// route for it: the administrator signs in to the web UI and posts to
// /{owner}/{repo}/actions/runs/{run id}/cancel with the session cookie. (Gitea
// 1.26 relies on cross-origin protection instead of CSRF tokens; a request
// without Origin and Sec-Fetch-Site headers passes it.)
func (g *Gitea) CancelRun(repo string, runID int64) {
	g.t.Helper()
	client := g.webSession()
	resp, err := client.Post(fmt.Sprintf("%s%s/%s/actions/runs/%d/cancel", g.URL, GiteaAdmin, repo, runID), "", nil)
	if err != nil {
		g.t.Fatalf("cancelling run %d of %s: %v", runID, repo, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		g.t.Fatalf("cancelling run %d of %s: %s", runID, repo, resp.Status)
	}
}

// webSession signs the administrator in to the web UI and returns a client
// carrying the session cookie.
func (g *Gitea) webSession() *http.Client {
	g.t.Helper()
	jar, _ := cookiejar.New(nil)
	client := &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	form := url.Values{"user_name": {GiteaAdmin}, "password": {GiteaAdminPassword}}
	resp, err := client.Post(g.URL+"user/login", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		g.t.Fatalf("signing in to Gitea's web UI: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		g.t.Fatalf("signing in to Gitea's web UI: %s, want 303 See Other", resp.Status)
	}
	return client
}

// CommitWorkflows commits several workflow files in one commit, so that one
// push queues one run per workflow at the same moment. It returns the SHA.
func (g *Gitea) CommitWorkflows(repo string, files map[string]string) string {
	g.t.Helper()
	opts := gitea.ChangeFilesOptions{Message: "add workflows", Branch: "main"}
	for name, content := range files {
		opts.Files = append(opts.Files, &gitea.ChangeFileOperation{
			Operation: "create",
			Path:      ".gitea/workflows/" + name,
			Content:   base64.StdEncoding.EncodeToString([]byte(content)),
		})
	}
	resp, _, err := g.Client.ChangeFiles(GiteaAdmin, repo, opts)
	if err != nil {
		g.t.Fatalf("committing workflows to %s: %v", repo, err)
	}
	return resp.Commit.SHA
}

// WaitRuns waits until the commit has want runs, all satisfying done.
func (g *Gitea) WaitRuns(repo, sha string, want int, timeout time.Duration, done func(RunStatus) bool) []*gitea.ActionWorkflowRun {
	g.t.Helper()
	var found []*gitea.ActionWorkflowRun
	err := Eventually(timeout, 250*time.Millisecond, func() error {
		runs, err := g.Runs(repo)
		if err != nil {
			return err
		}
		found = found[:0]
		for _, run := range runs {
			if run.HeadSha != sha {
				continue
			}
			if !done(RunStatus{Status: run.Status, Conclusion: run.Conclusion}) {
				return fmt.Errorf("run %d is %s/%s", run.ID, run.Status, run.Conclusion)
			}
			found = append(found, run)
		}
		if len(found) != want {
			return fmt.Errorf("%d runs for %s, want %d", len(found), sha, want)
		}
		return nil
	})
	if err != nil {
		g.t.Fatalf("waiting for the runs of %s in %s: %v", sha, repo, err)
	}
	return found
}

// InProgress is a WaitRun condition: a runner has picked the run up.
func InProgress(s RunStatus) bool { return s.Status == "in_progress" }

// RepoRunners lists the runners registered for a repository.
func (g *Gitea) RepoRunners(repo string) []*gitea.ActionRunner {
	g.t.Helper()
	resp, _, err := g.Client.ListRepoActionRunners(GiteaAdmin, repo, gitea.ListActionRunnersOptions{})
	if err != nil {
		g.t.Fatalf("listing the runners of %s: %v", repo, err)
	}
	return resp.Runners
}

// OpenForkPullRequest forks repo into a new organisation org, commits a
// workflow file to a new branch of the fork, and opens a pull request from
// it into repo's main branch. It returns the pull request's head SHA, the
// commit its runs are for.
func (g *Gitea) OpenForkPullRequest(repo, org, file, content string) string {
	g.t.Helper()
	if _, _, err := g.Client.CreateOrg(gitea.CreateOrgOption{Name: org, Visibility: gitea.VisibleTypePublic}); err != nil {
		g.t.Fatalf("creating organisation %s: %v", org, err)
	}
	if _, _, err := g.Client.CreateFork(GiteaAdmin, repo, gitea.CreateForkOption{Organization: &org}); err != nil {
		g.t.Fatalf("forking %s into %s: %v", repo, org, err)
	}
	resp, _, err := g.Client.CreateFile(org, repo, ".gitea/workflows/"+file, gitea.CreateFileOptions{
		FileOptions: gitea.FileOptions{Message: "add workflow " + file, BranchName: "main", NewBranchName: "from-fork"},
		Content:     base64.StdEncoding.EncodeToString([]byte(content)),
	})
	if err != nil {
		g.t.Fatalf("committing workflow %s to the fork %s/%s: %v", file, org, repo, err)
	}
	if _, _, err := g.Client.CreatePullRequest(GiteaAdmin, repo, gitea.CreatePullRequestOption{
		Head: org + ":from-fork", Base: "main", Title: "change from a fork",
	}); err != nil {
		g.t.Fatalf("opening a pull request from %s/%s: %v", org, repo, err)
	}
	return resp.Commit.SHA
}

// OpenPullRequest commits a file to a new branch of repo and opens a pull
// request from it into main. It returns the pull request's head SHA, the
// commit its runs are for.
func (g *Gitea) OpenPullRequest(repo, branch, file, content string) string {
	g.t.Helper()
	resp, _, err := g.Client.CreateFile(GiteaAdmin, repo, file, gitea.CreateFileOptions{
		FileOptions: gitea.FileOptions{Message: "add " + file, BranchName: "main", NewBranchName: branch},
		Content:     base64.StdEncoding.EncodeToString([]byte(content)),
	})
	if err != nil {
		g.t.Fatalf("committing %s to a new branch %s of %s: %v", file, branch, repo, err)
	}
	if _, _, err := g.Client.CreatePullRequest(GiteaAdmin, repo, gitea.CreatePullRequestOption{
		Head: branch, Base: "main", Title: "change " + file,
	}); err != nil {
		g.t.Fatalf("opening a pull request from %s: %v", branch, err)
	}
	return resp.Commit.SHA
}

// PullRequest opens a pull request from the branch head of repo into
// main.
func (g *Gitea) PullRequest(repo, head string) {
	g.t.Helper()
	if _, _, err := g.Client.CreatePullRequest(GiteaAdmin, repo, gitea.CreatePullRequestOption{
		Head: head, Base: "main", Title: "merge " + head,
	}); err != nil {
		g.t.Fatalf("opening a pull request from %s: %v", head, err)
	}
}

// CommitFile commits a file to main through the contents API. It returns
// the commit SHA.
func (g *Gitea) CommitFile(repo, file, content string) string {
	g.t.Helper()
	resp, _, err := g.Client.CreateFile(GiteaAdmin, repo, file, gitea.CreateFileOptions{
		FileOptions: gitea.FileOptions{Message: "add " + file, BranchName: "main"},
		Content:     base64.StdEncoding.EncodeToString([]byte(content)),
	})
	if err != nil {
		g.t.Fatalf("committing %s to %s: %v", file, repo, err)
	}
	return resp.Commit.SHA
}

// CommitToBranch commits a file to branch of repo through the contents API,
// making the branch from main first when it does not exist yet, so that a
// branch can carry a workflow that main does not. It returns the commit
// SHA.
func (g *Gitea) CommitToBranch(repo, branch, file, content string) string {
	g.t.Helper()
	opts := gitea.FileOptions{Message: "add " + file + " on " + branch, BranchName: branch}
	if _, resp, err := g.Client.GetRepoBranch(GiteaAdmin, repo, branch); err != nil {
		if resp == nil || resp.StatusCode != http.StatusNotFound {
			g.t.Fatalf("looking up branch %s of %s: %v", branch, repo, err)
		}
		opts.BranchName, opts.NewBranchName = "main", branch
	}
	resp, _, err := g.Client.CreateFile(GiteaAdmin, repo, file, gitea.CreateFileOptions{
		FileOptions: opts,
		Content:     base64.StdEncoding.EncodeToString([]byte(content)),
	})
	if err != nil {
		g.t.Fatalf("committing %s to branch %s of %s: %v", file, branch, repo, err)
	}
	return resp.Commit.SHA
}

// Tag tags the head of repo's main branch.
func (g *Gitea) Tag(repo, tag string) {
	g.t.Helper()
	if _, _, err := g.Client.CreateTag(GiteaAdmin, repo, gitea.CreateTagOption{TagName: tag, Target: "main"}); err != nil {
		g.t.Fatalf("tagging %s %s: %v", repo, tag, err)
	}
}

// StartGiteaWithRepo starts Gitea with the repository repo (see
// CreateRepo) and returns a runner registration token for it: the start of
// every runner test.
func StartGiteaWithRepo(t testing.TB, repo string) (*Gitea, string) {
	t.Helper()
	g := StartGitea(t, "")
	g.CreateRepo(repo)
	return g, g.RepoRegistrationToken(repo)
}
