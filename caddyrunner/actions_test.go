package caddyrunner

import (
	"slices"
	"testing"
)

func TestActionsCacheScope(t *testing.T) {
	repository := map[string]any{"repository": map[string]any{"default_branch": "main"}}
	for name, tc := range map[string]struct {
		ref      string
		readRefs []string
	}{
		"default branch": {"refs/heads/main", []string{"refs/heads/main"}},
		"other branch":   {"refs/heads/feature", []string{"refs/heads/feature", "refs/heads/main"}},
		"pull request":   {"refs/pull/7/head", []string{"refs/pull/7/head", "refs/heads/main"}},
		"tag":            {"refs/tags/v1", []string{"refs/tags/v1", "refs/heads/main"}},
	} {
		t.Run(name, func(t *testing.T) {
			task := taskWithContext(t, map[string]any{"repository": "pkgs/main", "ref": tc.ref, "event": repository})
			scope := actionsCacheScope(task)
			if scope.Repository != "pkgs/main" || scope.WriteRef != tc.ref || !slices.Equal(scope.ReadRefs, tc.readRefs) {
				t.Fatalf("scope = %+v, want writes to %s and reads from %v", scope, tc.ref, tc.readRefs)
			}
		})
	}
}

func TestActionClonesDir(t *testing.T) {
	dirs := map[string]bool{}
	for _, key := range [][2]string{
		{"http://127.0.0.1:3000", "http://127.0.0.1:3000"},
		{"http://127.0.0.1:3001", "http://127.0.0.1:3001"}, // the same Gitea, moved
		{"https://git.example.org", "https://github.com"},
		{"https://git.example.org", "https://git.example.org"},
	} {
		dir := actionClonesDir("/work/actions", key[0], key[1])
		if dirs[dir] {
			t.Errorf("%v shares the clone directory %s with another instance", key, dir)
		}
		dirs[dir] = true
	}
	if actionClonesDir("/w", "https://git.example.org/", "https://github.com") != actionClonesDir("/w", "https://git.example.org", "https://github.com/") {
		t.Error("a trailing slash changes the clone directory")
	}
}

func TestCloneURL(t *testing.T) {
	for uses, want := range map[string]string{
		"actions/checkout@v4":                   "https://github.com/actions/checkout",
		"actions/cache/restore@v4":              "https://github.com/actions/cache",
		"https://git.example.org/ci/hello@v1":   "https://git.example.org/ci/hello",
		"http://127.0.0.1:3000/ci/hello/sub@v1": "http://127.0.0.1:3000/ci/hello",
		"https://git.example.org":               "",
		"nothing":                               "",
	} {
		got, ok := cloneURL(uses, "https://github.com")
		if got != want || ok != (want != "") {
			t.Errorf("cloneURL(%q) = %q, %v; want %q", uses, got, ok, want)
		}
	}
	if got, _ := cloneURL("ci/hello@v1", "git.example.org"); got != "https://git.example.org/ci/hello" {
		t.Errorf("a default actions URL without a scheme gave %q", got)
	}
}
