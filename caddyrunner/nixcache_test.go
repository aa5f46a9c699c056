package caddyrunner

import (
	"testing"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"google.golang.org/protobuf/types/known/structpb"
)

func taskWithContext(t *testing.T, ctx map[string]any) *runnerv1.Task {
	t.Helper()
	s, err := structpb.NewStruct(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &runnerv1.Task{Context: s}
}

func pullRequestEvent(head, base string) map[string]any {
	return map[string]any{"pull_request": map[string]any{
		"head": map[string]any{"repo": map[string]any{"full_name": head}},
		"base": map[string]any{"repo": map[string]any{"full_name": base}},
	}}
}

func TestForkPullRequest(t *testing.T) {
	for name, tc := range map[string]struct {
		ctx  map[string]any
		fork bool
	}{
		"push":                       {map[string]any{"event_name": "push", "event": map[string]any{}}, false},
		"pull request from a branch": {map[string]any{"event_name": "pull_request", "event": pullRequestEvent("pkgs/main", "pkgs/main")}, false},
		"pull request from a fork":   {map[string]any{"event_name": "pull_request", "event": pullRequestEvent("someone/main", "pkgs/main")}, true},
		"review of a fork's PR":      {map[string]any{"event_name": "pull_request_review", "event": pullRequestEvent("someone/main", "pkgs/main")}, true},
		"pull_request_target":        {map[string]any{"event_name": "pull_request_target", "event": pullRequestEvent("someone/main", "pkgs/main")}, false},
		"pull request without repos": {map[string]any{"event_name": "pull_request", "event": map[string]any{}}, true},
	} {
		t.Run(name, func(t *testing.T) {
			if got := forkPullRequest(taskWithContext(t, tc.ctx)); got != tc.fork {
				t.Fatalf("forkPullRequest = %v, want %v", got, tc.fork)
			}
		})
	}
}

func TestCacheJobTellsDefaultBranchFromPullRequests(t *testing.T) {
	repo := map[string]any{"repository": map[string]any{"default_branch": "main"}}
	for name, tc := range map[string]struct {
		ctx                        map[string]any
		defaultBranch, pullRequest bool
	}{
		"push to main":     {map[string]any{"event_name": "push", "ref": "refs/heads/main", "event": repo}, true, false},
		"push to a branch": {map[string]any{"event_name": "push", "ref": "refs/heads/wip", "event": repo}, false, false},
		"tag":              {map[string]any{"event_name": "push", "ref": "refs/tags/v1", "event": repo}, false, false},
		"schedule on main": {map[string]any{"event_name": "schedule", "ref": "refs/heads/main", "event": repo}, true, false},
		"pull request":     {map[string]any{"event_name": "pull_request", "ref": "refs/heads/main", "event": repo}, false, true},
		"no default known": {map[string]any{"event_name": "push", "ref": "refs/heads/main", "event": map[string]any{}}, false, false},
	} {
		t.Run(name, func(t *testing.T) {
			tc.ctx["repository"], tc.ctx["run_id"], tc.ctx["run_number"], tc.ctx["sha"] = "pkgs/main", "41", "7", "abc"
			job := cacheJob(taskWithContext(t, tc.ctx), "https://git.example.org/")
			if job.DefaultBranch != tc.defaultBranch || job.PullRequest != tc.pullRequest {
				t.Fatalf("default branch %v, pull request %v; want %v, %v", job.DefaultBranch, job.PullRequest, tc.defaultBranch, tc.pullRequest)
			}
			if job.Repository != "pkgs/main" || job.RunID != "41" || job.Commit != "abc" || job.RunURL != "https://git.example.org/pkgs/main/actions/runs/41" {
				t.Fatalf("job %+v", job)
			}
		})
	}
}
