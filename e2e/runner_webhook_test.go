package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// webhookStatus is the status of the one runner of c.
func webhookStatus(t *testing.T, c *harness.Caddy) runnerStatus {
	t.Helper()
	st := adminStatus(t, c)
	if len(st.Runners) != 1 {
		t.Fatalf("status has %d runners, want 1: %+v", len(st.Runners), st)
	}
	return st
}

// webhookSecretFile writes a webhook secret into a file only its owner
// reads, as the runner demands.
func webhookSecretFile(t *testing.T, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "webhook.secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// webhookBlock is a gitea_runner `webhook` block.
func webhookBlock(lines ...string) string {
	return "webhook {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

// webhookCaddyfile is a caddy whose runner, named name, runs jobs labelled
// e2e in the busybox job image, registers with registration (a
// `registration_token …` or `api_token …` line and what goes with it) and
// has the given options, and which serves harness.WebhookSite.
func webhookCaddyfile(instance, name, image string, options ...string) string {
	return harness.Caddyfile{
		Runner: &harness.RunnerBlock{
			Instance: instance, Labels: "e2e:docker://" + image,
			Options:   append([]string{"name " + name, "fetch_interval 500ms"}, options...),
			Container: []string{"network host", "docker_host -"},
		},
		Sites: []string{harness.WebhookSite},
	}.String()
}

// repoHooks lists the webhooks of one of the administrator's repositories.
func repoHooks(t *testing.T, g *harness.Gitea, repo string) []*gitea.Hook {
	t.Helper()
	hooks, _, err := g.Client.ListRepoHooks(harness.GiteaAdmin, repo, gitea.ListHooksOptions{})
	if err != nil {
		t.Fatalf("listing the webhooks of %s: %v", repo, err)
	}
	return hooks
}

// waitSubscribed waits until the runner reports the webhook it keeps in
// Gitea, and returns its id.
func waitSubscribed(t *testing.T, c *harness.Caddy) int64 {
	t.Helper()
	var id int64
	if err := harness.Eventually(time.Minute, 200*time.Millisecond, func() error {
		st := webhookStatus(t, c).Runners[0]
		if st.WebhookID == 0 {
			return fmt.Errorf("no webhook yet (error: %q)", st.WebhookError)
		}
		id = st.WebhookID
		return nil
	}); err != nil {
		t.Fatalf("the runner did not make its webhook in Gitea: %v", err)
	}
	return id
}

// pushOneJob pushes a commit that runs one job: the first push adds the
// repository's only workflow, later ones add a file.
func pushOneJob(g *harness.Gitea, repo string, i int) string {
	if i == 0 {
		return g.CommitWorkflow(repo, "ci.yml", jobWorkflow("quick", "echo job for $GITHUB_SHA"))
	}
	return g.CommitFile(repo, fmt.Sprintf("push-%d", i), "a push\n")
}

// TestWebhookStartsJobsAtOnce: the runner makes its own webhook in Gitea
// with its api_token; with the safety-net poll at a minute, each of ten
// jobs pushed one after another starts within 2 s of its run's creation,
// fetched because the webhook woke the runner. The webhook is made once:
// a restart keeps it, a new secret replaces it, and dropping the url
// from the configuration deletes it.
func TestWebhookStartsJobsAtOnce(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g := harness.StartGitea(t, harness.WebhookINI)
	const repo = "hooked"
	g.CreateRepo(repo)
	secret := webhookSecretFile(t, "first secret")
	subscribed := func(secretFile string) string {
		return webhookCaddyfile(g.URL, "hooked-runner", image,
			"api_token "+g.Token, "scope repo "+harness.GiteaAdmin+"/"+repo,
			webhookBlock("secret_file "+secretFile, "poll_interval 60s", "url "+harness.WebhookURL))
	}
	caddy := harness.StartCaddy(t, subscribed(secret), harness.CaddyOptions{})
	waitRegistered(t, caddy)
	hookID := waitSubscribed(t, caddy)
	hooks := repoHooks(t, g, repo)
	wantURL := fmt.Sprintf("http://127.0.0.1:%d/hook", caddy.HTTPPort)
	if len(hooks) != 1 || hooks[0].ID != hookID || hooks[0].Config["url"] != wantURL ||
		!hooks[0].Active || strings.Join(hooks[0].Events, ",") != "workflow_job" {
		t.Fatalf("Gitea's webhooks of %s are %+v, want one active workflow_job webhook %d to %s", repo, hooks, hookID, wantURL)
	}

	// One workflow, and then a push per job: every push runs every
	// workflow of the repository.
	var delays []time.Duration
	for i := range 10 {
		sha := pushOneJob(g, repo, i)
		run := g.WaitRun(repo, sha, 2*time.Minute, harness.Completed)
		g.SucceededLog(repo, run)
		job := g.Jobs(repo, run.ID)[0]
		delay := job.StartedAt.Sub(job.CreatedAt)
		delays = append(delays, delay)
		if delay > 2*time.Second {
			t.Fatalf("job %d started %v after its run was created (Gitea's timestamps), want at most 2s with webhooks on", i, delay)
		}
	}
	t.Logf("from run created to job started, by Gitea's clock (whole seconds): %v", delays)
	st := webhookStatus(t, caddy).Runners[0]
	if st.TasksFetched["webhook"] != 10 || st.TasksFetched["poll"] != 0 || st.LastWebhook == nil {
		t.Fatalf("the runner fetched %v tasks by trigger (last webhook %v), want all 10 through the webhook", st.TasksFetched, st.LastWebhook)
	}

	caddy.Stop()
	caddy.Start()
	if again := waitSubscribed(t, caddy); again != hookID {
		t.Fatalf("after a restart the runner keeps webhook %d, want the same webhook %d", again, hookID)
	}
	if hooks := repoHooks(t, g, repo); len(hooks) != 1 {
		t.Fatalf("after a restart Gitea has %d webhooks for %s, want 1: %+v", len(hooks), repo, hooks)
	}

	// Gitea cannot change a webhook's secret: a new secret means a new
	// webhook, and the old one goes.
	if err := caddy.Reload(subscribed(webhookSecretFile(t, "second secret"))); err != nil {
		t.Fatal(err)
	}
	if err := harness.Eventually(time.Minute, 200*time.Millisecond, func() error {
		hooks := repoHooks(t, g, repo)
		st := webhookStatus(t, caddy).Runners[0]
		if len(hooks) != 1 || hooks[0].ID == hookID || hooks[0].ID != st.WebhookID {
			return fmt.Errorf("webhooks %+v, the runner keeps %d (error %q)", hooks, st.WebhookID, st.WebhookError)
		}
		return nil
	}); err != nil {
		t.Fatalf("a new secret did not replace webhook %d with one new webhook: %v", hookID, err)
	}
	sha := pushOneJob(g, repo, 10)
	g.SucceededLog(repo, g.WaitRun(repo, sha, 2*time.Minute, harness.Completed))
	if st := webhookStatus(t, caddy).Runners[0]; st.TasksFetched["webhook"] != 1 {
		t.Fatalf("after the new secret the runner fetched %v tasks by trigger, want the job through the webhook", st.TasksFetched)
	}

	if err := caddy.Reload(webhookCaddyfile(g.URL, "hooked-runner", image,
		"api_token "+g.Token, "scope repo "+harness.GiteaAdmin+"/"+repo,
		webhookBlock("secret_file "+secret, "poll_interval 60s"))); err != nil {
		t.Fatal(err)
	}
	if err := harness.Eventually(time.Minute, 200*time.Millisecond, func() error {
		if hooks := repoHooks(t, g, repo); len(hooks) != 0 {
			return fmt.Errorf("webhooks %+v", hooks)
		}
		return nil
	}); err != nil {
		t.Fatalf("with the url dropped from the configuration the runner's webhook stays: %v", err)
	}
}

// TestWebhookRefusedFallsBackToPolling: when Gitea signs with another
// secret than the runner's, the webhooks are refused, and the safety-net
// poll still runs every job.
func TestWebhookRefusedFallsBackToPolling(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g := harness.StartGitea(t, harness.WebhookINI)
	const repo = "misconfigured"
	g.CreateRepo(repo)
	caddy := harness.StartCaddy(t, webhookCaddyfile(g.URL, "fallback-runner", image,
		"registration_token "+g.RepoRegistrationToken(repo),
		webhookBlock("secret_file "+webhookSecretFile(t, "the runner's secret"), "poll_interval 3s")),
		harness.CaddyOptions{})
	waitRegistered(t, caddy)
	if _, _, err := g.Client.CreateRepoHook(harness.GiteaAdmin, repo, gitea.CreateHookOption{
		Type:   gitea.HookTypeGitea,
		Config: map[string]string{"url": fmt.Sprintf("http://127.0.0.1:%d/hook", caddy.HTTPPort), "content_type": "json", "secret": "another secret"},
		Events: []string{"workflow_job"},
		Active: true,
	}); err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		sha := pushOneJob(g, repo, i)
		g.SucceededLog(repo, g.WaitRun(repo, sha, 2*time.Minute, harness.Completed))
	}
	st := webhookStatus(t, caddy).Runners[0]
	if st.TasksFetched["poll"] != 3 || st.TasksFetched["webhook"] != 0 || st.LastWebhook != nil {
		t.Fatalf("the runner fetched %v tasks by trigger (last webhook %v), want all 3 by polling", st.TasksFetched, st.LastWebhook)
	}
	if !strings.Contains(caddy.Log(), "refused a webhook with a wrong signature") {
		t.Fatal("caddy's log does not say it refused Gitea's wrongly signed webhooks")
	}
}

func signWebhook(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

func postWebhook(url, event, signature string, body []byte) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Gitea-Event", event)
	req.Header.Set("X-Gitea-Event-Type", event)
	if signature != "" {
		req.Header.Set("X-Gitea-Signature", signature)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// TestWebhookReceiverAnswers: the real caddy answers forged, unsigned,
// oversized and other webhooks as it should, and 1,000 valid webhooks at
// once, while jobs are queued, never put two FetchTasks in flight at Gitea
// nor run a job twice.
func TestWebhookReceiverAnswers(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g := harness.StartGitea(t, "")
	const repo, secret = "flooded", "flood secret"
	g.CreateRepo(repo)
	counter := harness.StartRPCCounter(t, g.URL)
	caddy := harness.StartCaddy(t, webhookCaddyfile(counter.URL, "flooded-runner", image,
		"registration_token "+g.RepoRegistrationToken(repo), "capacity 2",
		webhookBlock("secret_file "+webhookSecretFile(t, secret), "poll_interval 60s")),
		harness.CaddyOptions{})
	waitRegistered(t, caddy)
	hook := caddy.URL() + "/hook"

	queued := []byte(`{"action":"queued","workflow_job":{"id":1,"run_id":1,"labels":["e2e"]},"repository":{"full_name":"ci/flooded"}}`)
	completed := []byte(`{"action":"completed","workflow_job":{"id":1,"run_id":1,"labels":["e2e"]}}`)
	oversized := append(append([]byte(`{"action":"queued","padding":"`), bytes.Repeat([]byte("x"), 2<<20)...), `"}`...)
	for name, c := range map[string]struct {
		event, signature string
		body             []byte
		want             int
	}{
		"unsigned":         {"workflow_job", "", queued, http.StatusUnauthorized},
		"forged":           {"workflow_job", signWebhook("not the secret", queued), queued, http.StatusForbidden},
		"oversized":        {"workflow_job", signWebhook(secret, oversized), oversized, http.StatusRequestEntityTooLarge},
		"a push":           {"push", signWebhook(secret, []byte(`{"ref":"refs/heads/main"}`)), []byte(`{"ref":"refs/heads/main"}`), http.StatusNoContent},
		"a completed job":  {"workflow_job", signWebhook(secret, completed), completed, http.StatusNoContent},
		"a queued e2e job": {"workflow_job", signWebhook(secret, queued), queued, http.StatusAccepted},
	} {
		got, err := postWebhook(hook, c.event, c.signature, c.body)
		if err != nil || got != c.want {
			t.Errorf("%s: got %d (%v), want %d", name, got, err, c.want)
		}
	}

	const jobs = 4
	files := map[string]string{}
	for i := range jobs {
		files[fmt.Sprintf("job%d.yml", i)] = jobWorkflow("flood", fmt.Sprintf("echo ran job %d", i))
	}
	fetchesBefore := counter.Count("FetchTask")
	sha := g.CommitWorkflows(repo, files)
	// The jobs wait for the flood to wake the runner: its poll is a minute
	// away.
	g.WaitRuns(repo, sha, jobs, time.Minute, harness.Queued)
	var wg sync.WaitGroup
	var mu sync.Mutex
	answers := map[int]int{}
	for range 20 {
		wg.Go(func() {
			for range 50 {
				code, err := postWebhook(hook, "workflow_job", signWebhook(secret, queued), queued)
				if err != nil {
					code = -1
				}
				mu.Lock()
				answers[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if answers[http.StatusAccepted] != 1000 {
		t.Fatalf("1,000 valid webhooks were answered %v, want 202 to each", answers)
	}
	runs := g.WaitRuns(repo, sha, jobs, 3*time.Minute, harness.Completed)
	for _, run := range runs {
		g.SucceededLog(repo, run)
		if js := g.Jobs(repo, run.ID); len(js) != 1 || js[0].RunAttempt > 1 {
			t.Fatalf("run %d has jobs %+v, want one job run once", run.ID, js)
		}
	}
	if most := counter.MostInFlight("FetchTask"); most != 1 {
		t.Fatalf("%d FetchTask calls were in flight at Gitea at once, want at most 1", most)
	}
	st := webhookStatus(t, caddy).Runners[0]
	if fetched := st.TasksFetched["webhook"] + st.TasksFetched["poll"]; fetched != jobs {
		t.Fatalf("the runner fetched %v tasks, want each of the %d jobs once", st.TasksFetched, jobs)
	}
	t.Logf("1,000 webhooks and %d jobs made %d FetchTask calls", jobs, counter.Count("FetchTask")-fetchesBefore)
}

// TestEphemeralRunnerExitsAfterOneJob: an ephemeral runner survives a
// reload with its one registration, takes one job of two, and then Caddy
// exits 0 (exit_when_done) and Gitea lists no runner.
func TestEphemeralRunnerExitsAfterOneJob(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g, token := harness.StartGiteaWithRepo(t, "ephemeral")
	config := func(labels string) string {
		return harness.Caddyfile{Runner: &harness.RunnerBlock{
			Instance: g.URL, RegistrationToken: token, Labels: labels,
			Options:   []string{"name one-job", "fetch_interval 500ms", "ephemeral exit_when_done"},
			Container: []string{"network host", "docker_host -"},
		}}.String()
	}
	caddy := harness.StartCaddy(t, config("other:host"), harness.CaddyOptions{NoHTTP: true})
	id := waitRegistered(t, caddy)
	if err := caddy.Reload(config("e2e:docker://" + image)); err != nil {
		t.Fatal(err)
	}
	if again := waitRegistered(t, caddy); again != id {
		t.Fatalf("after a reload the ephemeral runner is %d, want %d", again, id)
	}
	if runners := g.RepoRunners("ephemeral"); len(runners) != 1 {
		t.Fatalf("after a reload Gitea lists %d runners, want the one ephemeral runner", len(runners))
	}

	sha := g.CommitWorkflows("ephemeral", map[string]string{
		"a.yml": jobWorkflow("only", "echo the one job"),
		"b.yml": jobWorkflow("only", "echo the one job"),
	})
	exitErr, exited := caddy.WaitExit(3 * time.Minute)
	if !exited {
		t.Fatal("caddy did not exit after the ephemeral runner's job")
	}
	if exitErr != nil {
		t.Fatalf("caddy exited with %v after the ephemeral runner's job, want status 0", exitErr)
	}
	runs, err := g.Runs("ephemeral")
	if err != nil {
		t.Fatal(err)
	}
	completed := 0
	for _, run := range runs {
		if run.HeadSha == sha && run.Status == "completed" {
			completed++
			g.SucceededLog("ephemeral", run)
		}
	}
	if completed != 1 {
		t.Fatalf("%d runs completed, want exactly the one job the ephemeral runner took", completed)
	}
	if runners := g.RepoRunners("ephemeral"); len(runners) != 0 {
		t.Fatalf("Gitea still lists %d runners after the ephemeral runner's job", len(runners))
	}
}

// TestWebhookManyHosts: two caddies, each with its own runner and its own
// webhook on one Gitea, share 20 jobs: each job runs exactly once, and
// both hosts take some. One runner belongs to the repository and keeps
// the repository's webhook, the other to the whole instance and keeps a
// system webhook.
func TestWebhookManyHosts(t *testing.T) {
	image := harness.NewDocker(t).JobImage()
	g := harness.StartGitea(t, harness.WebhookINI)
	const repo, jobs = "shared", 20
	g.CreateRepo(repo)
	var caddies []*harness.Caddy
	for name, scope := range map[string]string{"host-a": "repo " + harness.GiteaAdmin + "/" + repo, "host-b": "instance"} {
		c := harness.StartCaddy(t, webhookCaddyfile(g.URL, name, image,
			"api_token "+g.Token, "scope "+scope, "capacity 2",
			webhookBlock("secret_file "+webhookSecretFile(t, name+" secret"), "poll_interval 60s", "url "+harness.WebhookURL)),
			harness.CaddyOptions{})
		waitRegistered(t, c)
		waitSubscribed(t, c)
		caddies = append(caddies, c)
	}
	if hooks := repoHooks(t, g, repo); len(hooks) != 1 {
		t.Fatalf("Gitea has %d webhooks for the repository, want the repository runner's: %+v", len(hooks), hooks)
	}
	systemHooks, _, err := g.Client.ListAdminHooks(gitea.ListAdminHooksOptions{Type: "system"})
	if err != nil || len(systemHooks) != 1 || strings.Join(systemHooks[0].Events, ",") != "workflow_job" {
		t.Fatalf("Gitea's system webhooks are %+v (%v), want the instance runner's one", systemHooks, err)
	}

	files := map[string]string{}
	for i := range jobs {
		files[fmt.Sprintf("job%02d.yml", i)] = jobWorkflow("shared", fmt.Sprintf("echo ran job %d", i))
	}
	sha := g.CommitWorkflows(repo, files)
	runs := g.WaitRuns(repo, sha, jobs, 5*time.Minute, harness.Completed)
	for _, run := range runs {
		g.SucceededLog(repo, run)
		if js := g.Jobs(repo, run.ID); len(js) != 1 || js[0].RunAttempt > 1 {
			t.Fatalf("run %d has jobs %+v, want one job run once", run.ID, js)
		}
	}
	total := 0
	for i, c := range caddies {
		st := webhookStatus(t, c).Runners[0]
		took := st.TasksFetched["webhook"] + st.TasksFetched["poll"]
		t.Logf("host %d took %d jobs (%v)", i, took, st.TasksFetched)
		if took == 0 {
			t.Errorf("host %d took no job of %d", i, jobs)
		}
		total += took
	}
	if total != jobs {
		t.Fatalf("the hosts took %d tasks in all, want each of the %d jobs once", total, jobs)
	}
}
