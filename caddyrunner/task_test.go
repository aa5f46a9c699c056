package caddyrunner

import (
	"testing"
)

func TestGithubContext(t *testing.T) {
	ctx := map[string]any{
		"event":      map[string]any{"repository": map[string]any{"default_branch": "main"}},
		"run_id":     "41",
		"run_number": "7",
		"repository": "pkgs/main",
		"event_name": "push",
		"sha":        "0123abcd",
		"ref":        "refs/heads/main",
		"ref_name":   "main",
		"token":      "task-token",
		"actor":      "alice",
	}
	task := taskWithContext(t, ctx)
	got := githubContext(task)
	if got.RunID != "41" || got.RunNumber != "7" || got.Repository != "pkgs/main" || got.EventName != "push" ||
		got.Sha != "0123abcd" || got.Ref != "refs/heads/main" || got.RefName != "main" || got.Actor != "alice" {
		t.Fatalf("github context %+v", got)
	}
	if branch := got.Event["repository"].(map[string]any)["default_branch"]; branch != "main" {
		t.Fatalf("the event lost its payload: %v", got.Event)
	}
	if got.Token != "task-token" {
		t.Fatalf("token %q, want the task's", got.Token)
	}
	task.Secrets = map[string]string{"GITHUB_TOKEN": "from-github-secret"}
	if got := githubContext(task); got.Token != "from-github-secret" {
		t.Fatalf("token %q, want the GITHUB_TOKEN secret", got.Token)
	}
	task.Secrets["GITEA_TOKEN"] = "from-gitea-secret"
	if got := githubContext(task); got.Token != "from-gitea-secret" {
		t.Fatalf("token %q, want the GITEA_TOKEN secret first", got.Token)
	}
}

func TestParseScope(t *testing.T) {
	for in, want := range map[string]string{"": "instance", "instance": "instance", "org pkgs": "org pkgs", "repo  pkgs/main ": "repo pkgs/main"} {
		got, err := parseScope(in)
		if err != nil || got.String() != want {
			t.Errorf("parseScope(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"org", "repo pkgs", "repo a/b/c", "repo /b", "org a/b", "team x", "org a b"} {
		if _, err := parseScope(bad); err == nil {
			t.Errorf("parseScope(%q) accepted", bad)
		}
	}
}

func TestContainerNamesTellRunnersApart(t *testing.T) {
	a := makeDaemon("http://gitea.invalid", fileIdentityStore{path: t.TempDir() + "/.runner"}, &settings{name: "a"}, nil)
	b := makeDaemon("http://other.invalid", fileIdentityStore{path: t.TempDir() + "/.runner"}, &settings{name: "b"}, nil)
	a.id = &identity{UUID: "0a1b2c3d-0000-4000-8000-000000000001"}
	b.id = &identity{UUID: "9f8e7d6c-0000-4000-8000-000000000002"}
	if got := a.containerNamePrefix(7); got != "GITEA-ACTIONS-TASK-7-RUNNER-0a1b2c3d" {
		t.Fatalf("task 7's containers are named %q", got)
	}
	if a.containerNamePrefix(7) == b.containerNamePrefix(7) {
		t.Fatal("two runners name their task 7's containers alike")
	}
}
