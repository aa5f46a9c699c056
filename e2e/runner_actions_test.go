package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// The scripts jobs run with node: the real @actions/cache, @actions/artifact
// and @actions/core, from NODE_PATH.
var actionsScripts = map[string]string{
	"save.js": `const cache = require('@actions/cache');
const [key, ...paths] = process.argv.slice(2);
cache.saveCache(paths, key).then(id => {
  if (id === undefined || id === -1) { console.log('cache save of ' + key + ' failed'); process.exit(1); }
  console.log('cache saved: ' + key);
}, err => { console.log('cache save of ' + key + ' failed: ' + err); process.exit(1); });
`,
	// restore.js LABEL KEY RESTORE_KEY PATH... prints "LABEL: HIT key" or
	// "LABEL: MISS".
	"restore.js": `const cache = require('@actions/cache');
const [label, key, restoreKey, ...paths] = process.argv.slice(2);
cache.restoreCache(paths, key, restoreKey ? [restoreKey] : []).then(
  hit => console.log(label + ': ' + (hit ? 'HIT ' + hit : 'MISS')),
  err => { console.log(label + ': ERROR ' + err); process.exit(1); });
`,
	"artifact.js": `const artifact = require('@actions/artifact');
const root = process.cwd() + '/data';
artifact.create().uploadArtifact('data-blob', [root + '/blob'], root).then(r => {
  if (r.failedItems.length) { console.log('artifact upload failed: ' + r.failedItems); process.exit(1); }
  console.log('artifact uploaded: ' + r.artifactName + ' ' + r.size + ' bytes');
}, err => { console.log('artifact upload failed: ' + err); process.exit(1); });
`,
	// digest.sh DIR is one hash of a tree's names, types, modes, link
	// targets and file contents.
	"digest.sh": `cd "$1" && { find . -printf '%p %y %m %l\n' | LC_ALL=C sort; find . -type f | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1
`,
}

// cacheWorkflow saves a directory from a container job and restores it on
// the host in a job that needs it, then probes what the job may restore
// of the default branch's and pull requests' entries. The host job leaves
// its runtime token in tokens/, for the test to try once it is over.
func cacheWorkflow(scripts, tokens string) string {
	return strings.NewReplacer("SCRIPTS", scripts, "TOKENS", tokens).Replace(`on:
  push:
    branches: [main]
  pull_request:
defaults:
  run:
    shell: bash
jobs:
  save:
    runs-on: node
    outputs:
      digest: ${{ steps.data.outputs.digest }}
    steps:
      - id: data
        run: |
          mkdir -p data/sub
          head -c 3000000 /dev/urandom > data/blob
          echo "${{ github.ref }}" > data/sub/ref
          ln -s blob data/link
          printf '#!/bin/sh\necho hi\n' > data/run.sh
          chmod 755 data/run.sh
          : > data/empty
          echo "digest=$(sh SCRIPTS/digest.sh data)" >> "$GITHUB_OUTPUT"
      - run: node SCRIPTS/save.js "saved-on-${{ github.event_name }}-${{ github.run_number }}" data
      - run: node SCRIPTS/artifact.js
  restore:
    needs: save
    runs-on: host
    steps:
      - run: |
          echo "$ACTIONS_RUNTIME_TOKEN" > TOKENS/${{ github.event_name }}-${{ github.run_number }}
          node SCRIPTS/restore.js own "saved-on-${{ github.event_name }}-${{ github.run_number }}" "" data
          test "$(sh SCRIPTS/digest.sh data)" = "${{ needs.save.outputs.digest }}"
          echo "restored byte for byte"
          node SCRIPTS/restore.js "main entry" probe "saved-on-push-" data
          node SCRIPTS/restore.js "pr entry" probe "saved-on-pull_request-" data
`)
}

// otherRepositoryWorkflow is another repository's job that looks for the entries of
// the first.
func otherRepositoryWorkflow(scripts string) string {
	return strings.ReplaceAll(`on: [push]
jobs:
  probe:
    runs-on: host
    steps:
      - run: node SCRIPTS/restore.js "other repository" probe "saved-on-" data
`, "SCRIPTS", scripts)
}

// actionsWorkflow uses a composite, a JavaScript and a Docker action kept
// in Gitea, with inputs and outputs crossing steps, then an action in the
// workspace.
const actionsWorkflow = `on:
  push:
    branches: [main]
jobs:
  use-actions:
    runs-on: node
    steps:
      - id: hello
        uses: ci/hello-action@v1
        with:
          who: world
      - id: upper
        uses: ci/upper-action@v1
        with:
          text: ${{ steps.hello.outputs.greeting }}
      - run: echo "actions said ${{ steps.upper.outputs.upper }}"
      - uses: ci/docker-action@v1
        with:
          text: ${{ steps.upper.outputs.upper }}
      - run: |
          mkdir -p .local-action
          printf 'name: local\nruns:\n  using: composite\n  steps:\n    - shell: sh\n      run: echo local action ran\n' > .local-action/action.yml
      - uses: ./.local-action
`

// dockerAction runs the busybox job image with the input in its arguments.
const dockerAction = `name: docker
inputs:
  text:
    required: true
runs:
  using: docker
  image: docker://` + harness.JobImage + `
  args: ["echo", "docker action says ${{ inputs.text }}"]
`

// helloAction is a composite action whose greeting names where it came from.
func helloAction(from string) string {
	return `name: hello
inputs:
  who:
    required: true
outputs:
  greeting:
    value: ${{ steps.greet.outputs.greeting }}
runs:
  using: composite
  steps:
    - id: greet
      shell: sh
      run: |
        echo "greeting=hello ${{ inputs.who }}" >> "$GITHUB_OUTPUT"
        echo "hello-action from ` + from + `"
`
}

const upperAction = `name: upper
inputs:
  text:
    required: true
outputs:
  upper:
    description: the text in capitals
runs:
  using: node20
  main: index.js
`

const upperActionScript = `const core = require('@actions/core');
core.setOutput('upper', core.getInput('text', { required: true }).toUpperCase());
`

// publishAction commits files to a new repository of Gitea's and tags it v1.
func publishAction(g *harness.Gitea, repo string, files map[string]string) {
	g.CreateRepo(repo)
	for name, content := range files {
		g.CommitFile(repo, name, content)
	}
	g.Tag(repo, "v1")
}

// actionsCacheCaddyfile runs jobs on the host and in the node image, with
// the actions cache main served beside a Nix cache on the test's port.
func actionsCacheCaddyfile(g *harness.Gitea, clients, scripts, cacheRoot, secret string) string {
	nodeModules := filepath.Join(clients, "node_modules")
	return harness.Caddyfile{
		Runner: &harness.RunnerBlock{
			Instance: g.URL,
			Labels:   "node:docker://" + harness.NodeJobImage + " host:host",
			Options: []string{
				"api_token " + g.Token, "scope instance", "fetch_interval 500ms", "capacity 2",
				"actions_cache main", "env NODE_PATH " + nodeModules,
			},
			Container: []string{
				"network host",
				fmt.Sprintf("options \"--volume %[1]s:%[1]s:ro --volume %[2]s:%[2]s:ro\"", clients, scripts),
				"valid_volumes " + clients + " " + scripts,
			},
		},
		Cache: &harness.CacheSite{
			Options: append([]string{"name main"}, harness.CacheOptions(filepath.Join(cacheRoot, "nix"), secret)...),
		},
		// The actions cache in a site whose fallback answers everything,
		// written first: the fallback must never answer the protocol.
		Sites: []string{fmt.Sprintf(`http://127.0.0.1:{$CADDY_HTTPS_PORT} {
	respond "fallback"
	actions_cache {
		name main
		url %s/
		root %s
	}
}`, actionsCacheURL, filepath.Join(cacheRoot, "actions"))},
	}.String()
}

// actionsCacheURL is where actionsCacheCaddyfile serves the actions cache:
// a plain-HTTP site on the port StartCaddy reserves for HTTPS.
const actionsCacheURL = "http://127.0.0.1:{$CADDY_HTTPS_PORT}"

// TestActionsCache runs the real @actions/cache and @actions/artifact in
// jobs: an entry saved in a container job is restored byte for byte on the
// host by a job that needs it; a pull request restores the default
// branch's entries and its own, the default branch never the pull
// request's, another repository nothing; a finished job's token is
// refused. Remote composite, JavaScript and Docker actions resolve from
// Gitea, and an action in the workspace runs.
func TestActionsCache(t *testing.T) {
	clients := harness.ActionsClients(t)
	docker := harness.NewDocker(t)
	docker.NodeJobImage()
	docker.JobImage()
	g := harness.StartGitea(t, "")
	g.CreateRepo("pkgs")
	g.CreateRepo("other")
	publishAction(g, "hello-action", map[string]string{"action.yml": helloAction("gitea")})
	publishAction(g, "upper-action", map[string]string{"action.yml": upperAction, "index.js": upperActionScript})
	publishAction(g, "docker-action", map[string]string{"action.yml": dockerAction})

	dir := t.TempDir()
	scripts, tokens := filepath.Join(dir, "scripts"), filepath.Join(dir, "tokens")
	for _, d := range []string{scripts, tokens} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range actionsScripts {
		if err := os.WriteFile(filepath.Join(scripts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	secret, _ := keygen(t, "actions-1")
	caddy := harness.StartCaddy(t, actionsCacheCaddyfile(g, clients, scripts, filepath.Join(dir, "caches"), secret), harness.CaddyOptions{})

	// runLogs waits for the commit's runs in repo to succeed and returns
	// the log of every job, by job name.
	runLogs := func(repo, sha string, runs int) map[string]string {
		t.Helper()
		logs := map[string]string{}
		for _, run := range g.WaitRuns(repo, sha, runs, 5*time.Minute, harness.Completed) {
			for _, job := range g.Jobs(repo, run.ID) {
				logs[job.Name] = g.JobLog(repo, job.ID)
			}
			if run.Conclusion != "success" {
				t.Fatalf("run %d of %s concluded %s; job logs:\n%v", run.ID, repo, run.Conclusion, logs)
			}
		}
		return logs
	}
	expect := func(what, log string, patterns ...string) {
		t.Helper()
		for _, pattern := range patterns {
			if !regexp.MustCompile(pattern).MatchString(log) {
				t.Errorf("%s: the log lacks %q:\n%s", what, pattern, log)
			}
		}
		for _, warning := range []string{"Failed to save", "Failed to restore"} {
			if strings.Contains(log, warning) {
				t.Errorf("%s: @actions/cache warned %q:\n%s", what, warning, log)
			}
		}
	}

	// A push to main: save in a container, restore on the host.
	logs := runLogs("pkgs", g.CommitWorkflows("pkgs", map[string]string{
		"cache.yml": cacheWorkflow(scripts, tokens), "actions.yml": actionsWorkflow,
	}), 2)
	expect("push, save", logs["save"], `cache saved: saved-on-push-\d+`, `artifact uploaded: data-blob 3000000 bytes`)
	expect("push, restore", logs["restore"], `own: HIT saved-on-push-\d+`, `restored byte for byte`,
		`main entry: HIT saved-on-push-`, `pr entry: MISS`)
	expect("remote actions", logs["use-actions"], `hello-action from gitea`, `actions said HELLO WORLD`,
		`docker action says HELLO WORLD`, `local action ran`)

	// Every token but that of a running job is refused.
	tokenFiles, err := filepath.Glob(filepath.Join(tokens, "push-*"))
	if err != nil || len(tokenFiles) != 1 {
		t.Fatalf("the push job left %v (%v), want one token file", tokenFiles, err)
	}
	finished, err := os.ReadFile(tokenFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	for name, token := range map[string]string{"no token": "", "a wrong token": "not-a-token", "a finished job's token": strings.TrimSpace(string(finished))} {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/_apis/artifactcache/cache?keys=saved-on-push-1&version=0123abcd", caddy.HTTPSPort), nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("a lookup with %s got %d %s, want 401", name, resp.StatusCode, body)
		}
	}

	// Another repository finds nothing of pkgs.
	logs = runLogs("other", g.CommitWorkflow("other", "probe.yml", otherRepositoryWorkflow(scripts)), 1)
	expect("other repository", logs["probe"], `other repository: MISS`)

	// A pull request restores the default branch's entries and its own.
	logs = runLogs("pkgs", g.OpenPullRequest("pkgs", "feature", "feature.txt", "a change\n"), 1)
	expect("pull request, restore", logs["restore"], `own: HIT saved-on-pull_request-\d+`, `restored byte for byte`,
		`main entry: HIT saved-on-push-`, `pr entry: HIT saved-on-pull_request-`)

	// The default branch never restores the pull request's entry.
	logs = runLogs("pkgs", g.CommitFile("pkgs", "again.txt", "another push\n"), 2)
	expect("second push, restore", logs["restore"], `own: HIT saved-on-push-\d+`, `main entry: HIT saved-on-push-`, `pr entry: MISS`)

	// Three runs saved an entry each; seven restores hit and three missed.
	for sample, want := range map[string]float64{
		`caddy_actions_cache_entries{cache="main"}`:                     3,
		`caddy_actions_cache_lookups_total{cache="main",result="hit"}`:  7,
		`caddy_actions_cache_lookups_total{cache="main",result="miss"}`: 3,
	} {
		if got := metricValue(t, caddy, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
}

// TestRemoteActionsFollowGitea runs a job using a remote action, moves
// Gitea to another port and runs it again, then points the runner at
// another Gitea whose action of the same name says something else: the
// cached clones never keep the old address, nor cross instances. An action
// whose source stops answering runs from its clone.
func TestRemoteActionsFollowGitea(t *testing.T) {
	first := harness.StartGitea(t, "")
	first.CreateRepo("pkgs")
	publishAction(first, "hello-action", map[string]string{"action.yml": helloAction("the first gitea")})
	workDir := t.TempDir()
	caddyfile := func(g *harness.Gitea) string {
		return harness.Caddyfile{Runner: &harness.RunnerBlock{
			Instance: g.URL, Labels: "e2e:host",
			Options: []string{"api_token " + g.Token, "scope instance", "fetch_interval 500ms", "work_dir " + workDir},
		}}.String()
	}
	workflow := func(name, uses string) string {
		return `on: [push]
jobs:
  ` + name + `:
    runs-on: e2e
    steps:
      - id: hello
        uses: ` + uses + `
        with:
          who: ` + name + `
      - run: echo "said ${{ steps.hello.outputs.greeting }}"
`
	}
	runOn := func(g *harness.Gitea, name string, uses ...string) string {
		t.Helper()
		action := "ci/hello-action@v1"
		if len(uses) > 0 {
			action = uses[0]
		}
		run := g.WaitRun("pkgs", g.CommitWorkflow("pkgs", name+".yml", workflow(name, action)), 3*time.Minute, harness.Completed)
		log := g.JobLog("pkgs", g.Jobs("pkgs", run.ID)[0].ID)
		if run.Conclusion != "success" {
			t.Fatalf("the job %s concluded %s:\n%s", name, run.Conclusion, log)
		}
		return log
	}
	caddy := harness.StartCaddy(t, caddyfile(first), harness.CaddyOptions{NoHTTP: true})
	if log := runOn(first, "before"); !strings.Contains(log, "hello-action from the first gitea") || !strings.Contains(log, "said hello before") {
		t.Fatalf("the action did not run:\n%s", log)
	}

	first.Move()
	if err := caddy.Reload(caddyfile(first)); err != nil {
		t.Fatal(err)
	}
	if log := runOn(first, "moved"); !strings.Contains(log, "hello-action from the first gitea") {
		t.Fatalf("after Gitea moved, the action did not run from its new address:\n%s", log)
	}

	second := harness.StartGitea(t, "")
	second.CreateRepo("pkgs")
	publishAction(second, "hello-action", map[string]string{"action.yml": helloAction("the second gitea")})
	if err := caddy.Reload(caddyfile(second)); err != nil {
		t.Fatal(err)
	}
	log := runOn(second, "elsewhere")
	if !strings.Contains(log, "hello-action from the second gitea") || strings.Contains(log, "the first gitea") {
		t.Fatalf("a job of the second Gitea ran another instance's action:\n%s", log)
	}

	// An action from elsewhere keeps running from its clone once the place
	// it comes from stops answering.
	elsewhere := first.URL + "ci/hello-action@v1"
	if log := runOn(second, "online", elsewhere); !strings.Contains(log, "hello-action from the first gitea") {
		t.Fatalf("the action from %s did not run:\n%s", elsewhere, log)
	}
	first.Stop()
	log = runOn(second, "offline", elsewhere)
	if !strings.Contains(log, "hello-action from the first gitea") || !strings.Contains(log, "does not answer") {
		t.Fatalf("with %s down, the action did not run from its clone:\n%s", elsewhere, log)
	}
}
