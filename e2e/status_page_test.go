package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/chromedp/chromedp"
)

// statusWorkflow builds a closure of three new paths with Nix (pushed
// automatically), then waits until the test lets it finish.
var statusWorkflow = `on: [push]
jobs:
  build:
    runs-on: self-hosted
    steps:
      - name: build
        run: |
` + closureScript("NONCE", "  a = mk \"status-a\" [];\n  b = mk \"status-b\" [ a ];\nin mk \"status-c\" [ b ]") + `
          nix-build /tmp/closure.nix --no-out-link
      - name: wait for the test
        run: |
          until curl -sf GATE; do sleep 0.5; done
`

// TestStatusPageInABrowser opens the host_status page in a real Chromium
// behind basic_auth, on a caddy with a runner, a Nix cache and an actions
// cache, while a real job runs in Docker for a real Gitea: the page shows
// the job running with a link to its run in Gitea, then, updating itself,
// finished with its result, and the closure it pushed with the run's link
// and size. A wrong password is refused, and no secret the test configured
// is in the page, its event feed or its JSON. Screenshots are left in the
// test's artifacts.
func TestStatusPageInABrowser(t *testing.T) {
	browser := harness.Browser(t)
	docker := harness.NewDocker(t)
	image := docker.NixJobImage()
	g, registrationToken := harness.StartGiteaWithRepo(t, "pkgs")

	// The job waits for this gate to open.
	var open atomic.Bool
	gate, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gateServer := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !open.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	go func() { _ = gateServer.Serve(gate) }()
	t.Cleanup(func() { _ = gateServer.Close() })

	dir := t.TempDir()
	secret, public := harness.TempKeygen(t, "status-1")
	const uploadToken = "status-upload-token-5f1c0e"
	const password = "status-page-password-9d2a7b"
	hash, err := exec.Command(harness.CaddyBinary(t, "caddy"), "hash-password", "--plaintext", password).Output()
	if err != nil {
		t.Fatalf("caddy hash-password: %v", err)
	}
	statusPort := harness.FreePort(t)
	root := filepath.Join(dir, "nix")
	config := harness.RunnerCache(g.URL, registrationToken, "self-hosted:docker://"+image, "host",
		root, secret, "fetch_interval 500ms", "actions_cache main")
	config.Cache.Upload = []string{"token " + uploadToken}
	config.Cache.Options = append(config.Cache.Options, "retention {\n\tmax_size 1GiB\n}")
	sites := func(refresh string) []string {
		return []string{
			fmt.Sprintf("%s {\n\tbind 127.0.0.1\n\tactions_cache {\n\t\tname main\n\t\turl %[1]s/\n\t\troot %s\n\t}\n}",
				actionsCacheURL, filepath.Join(dir, "actions")),
			fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tbasic_auth {\n\t\tadmin %s\n\t}\n\thost_status {\n\t\trefresh %s\n\t}\n}",
				statusPort, strings.TrimSpace(string(hash)), refresh),
		}
	}
	config.Sites = sites("1s")
	caddy := harness.StartCaddy(t, config.String(), harness.CaddyOptions{})
	statusURL := fmt.Sprintf("http://127.0.0.1:%d/", statusPort)

	// basic_auth keeps the page, its feed and its JSON from anyone else.
	for _, query := range []string{"", "?format=json", "?feed=events"} {
		for _, user := range []*statusUser{nil, {"admin", "wrong"}, {"someone", password}} {
			status, body := statusGet(t, statusURL+query, user, 0)
			if status != http.StatusUnauthorized || strings.Contains(body, "Runners") {
				t.Errorf("GET %s as %v: %d, want 401 and no page:\n%s", query, user, status, body)
			}
		}
	}
	authed := fmt.Sprintf("http://admin:%s@127.0.0.1:%d/", password, statusPort)
	// Chromium refuses to load a page whose credentials the server
	// refused (net::ERR_INVALID_AUTH_CREDENTIALS) or shows the 401.
	wrongCtx, cancelWrong := context.WithTimeout(browser, 30*time.Second)
	refused, err := chromedp.Run(wrongCtx, chromedp.NavigateResponse(fmt.Sprintf("http://admin:wrong@127.0.0.1:%d/", statusPort)))
	cancelWrong()
	switch {
	case err != nil && strings.Contains(err.Error(), "ERR_INVALID_AUTH_CREDENTIALS"):
	case err != nil:
		t.Fatalf("opening the page with a wrong password: %v", err)
	case refused.Status != http.StatusUnauthorized:
		t.Errorf("the browser with a wrong password got %d, want 401", refused.Status)
	}

	// Idle: the runner registered, no job yet.
	harness.InBrowser(t, browser, 30*time.Second, "opening the page", chromedp.Navigate(authed))
	harness.InBrowser(t, browser, 2*time.Minute, "waiting for the idle runner",
		chromedp.WaitVisible(chromedp.CSS(`tr.runner[data-state="idle"]`)))
	harness.Screenshot(t, browser, "1-idle.png")

	// Running: the page, updating itself, shows the job and links its run.
	workflow := strings.NewReplacer("NONCE", fmt.Sprint(time.Now().UnixNano()),
		"GATE", fmt.Sprintf("http://%s/", gate.Addr())).Replace(statusWorkflow)
	sha := g.CommitWorkflow("pkgs", "status.yml", workflow)
	harness.InBrowser(t, browser, 5*time.Minute, "waiting for the running job",
		chromedp.WaitVisible(chromedp.CSS(`tr.job[data-state="running"] a.run`)))
	harness.Screenshot(t, browser, "2-running.png")
	run := g.WaitRun("pkgs", sha, time.Minute, harness.InProgress)
	runURL := fmt.Sprintf("%s/%s/pkgs/actions/runs/%d", strings.TrimSuffix(g.URL, "/"), harness.GiteaAdmin, run.ID)
	link := harness.InBrowser(t, browser, 10*time.Second, "reading the running job's link",
		chromedp.AttributeValue(chromedp.CSS(`tr.job[data-state="running"] a.run`), "href"))
	if link.Value != runURL {
		t.Errorf("the running job links %q, want its run %q", link.Value, runURL)
	}
	if resp, err := http.Get(link.Value); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
		t.Errorf("the running job's link %s answers %s in Gitea", link.Value, resp.Status)
	}
	state := harness.InBrowser(t, browser, 10*time.Second, "reading the runner's state",
		chromedp.AttributeValue(chromedp.CSS(`tr.runner`), "data-state"))
	if state.Value != "running" {
		t.Errorf("while the job runs the runner is %q, want running", state.Value)
	}

	// Finished: listed with its result, and the cache shows its pushes.
	open.Store(true)
	finished := g.WaitRun("pkgs", sha, 5*time.Minute, harness.Completed)
	if finished.Conclusion != "success" {
		t.Fatalf("the job concluded %q:\n%s", finished.Conclusion, g.JobLog("pkgs", g.Jobs("pkgs", finished.ID)[0].ID))
	}
	harness.InBrowser(t, browser, time.Minute, "waiting for the finished job",
		chromedp.WaitVisible(chromedp.CSS(`tr.job[data-state="finished"][data-result="success"] a.run[href="`+runURL+`"]`)))
	pushRow := `article[data-cache="main"] tr.push:has(a.run[href="` + runURL + `"])`
	harness.InBrowser(t, browser, time.Minute, "waiting for the run's pushes",
		chromedp.WaitVisible(chromedp.CSS(pushRow)))
	narSizes, paths := storedNarSizes(t, root)
	if paths != 3 {
		t.Fatalf("the cache holds %d paths after the job, want the closure's 3", paths)
	}
	pushedPaths := harness.InBrowser(t, browser, 10*time.Second, "reading the run's pushed paths",
		chromedp.Text(chromedp.CSS(pushRow+" .push-paths")))
	pushedBytes := harness.InBrowser(t, browser, 10*time.Second, "reading the run's pushed bytes",
		chromedp.AttributeValue(chromedp.CSS(pushRow+" .push-bytes"), "data-bytes"))
	if pushedPaths != "3" || pushedBytes.Value != strconv.FormatInt(narSizes, 10) {
		t.Errorf("the page says the run pushed %s paths of %s NAR bytes; the cache holds 3 of %d", pushedPaths, pushedBytes.Value, narSizes)
	}
	// The cache's own count is at most 30 s old.
	harness.InBrowser(t, browser, 2*time.Minute, "waiting for the cache's path count",
		chromedp.WaitVisible(chromedp.CSS(`article[data-cache="main"] dd.paths[data-paths="3"]`)))
	harness.Screenshot(t, browser, "3-finished.png")

	// The page updated itself while it was open; every section is there.
	updates := harness.InBrowser(t, browser, 10*time.Second, "counting the page's updates",
		chromedp.Evaluate[string](`document.body.dataset.updates || "0"`))
	if n, _ := strconv.Atoi(updates); n < 2 {
		t.Errorf("the page updated itself %s times while open", updates)
	}
	sections := harness.InBrowser(t, browser, 10*time.Second, "listing the sections",
		chromedp.Evaluate[string](`[...document.querySelectorAll("main > section")].map(s => s.id).join(" ")`))
	if sections != "runners jobs caches actions-caches" {
		t.Errorf("the page's sections are %q", sections)
	}
	keys := harness.InBrowser(t, browser, 10*time.Second, "reading the cache's public key",
		chromedp.Text(chromedp.CSS(`article[data-cache="main"] dd.public-keys`)))
	if !strings.Contains(keys, public) {
		t.Errorf("the cache's public keys read %q, want %s", keys, public)
	}

	// A reload does not wait for the open page, which then follows the
	// new configuration.
	config.Sites = sites("2s")
	reloaded := make(chan error, 1)
	go func() { reloaded <- caddy.Reload(config.String()) }()
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatalf("reloading with the page open: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("caddy reload waits for the open status page")
	}
	seen, _ := strconv.Atoi(updates)
	if err := harness.Eventually(30*time.Second, time.Second, func() error {
		now := harness.InBrowser(t, browser, 10*time.Second, "counting the page's updates",
			chromedp.Evaluate[string](`document.body.dataset.updates || "0"`))
		if n, _ := strconv.Atoi(now); n < seen+2 {
			return fmt.Errorf("the page updated %d times in all, %d before the reload", n, seen)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Nothing secret in what the page shows or sends.
	_, page := statusGet(t, statusURL, &statusUser{"admin", password}, 0)
	_, feed := statusGet(t, statusURL+"?feed=events", &statusUser{"admin", password}, 3)
	_, data := statusGet(t, statusURL+"?format=json", &statusUser{"admin", password}, 0)
	if !strings.Contains(feed, "event: update") || !strings.Contains(data, `"runners"`) || !strings.Contains(page, `id="caches"`) {
		t.Fatalf("the page, feed or JSON is not what it should be:\n%s\n%s\n%s", page, feed, data)
	}
	secretKey := readSecret(t, secret)
	for name, value := range map[string]string{
		"the registration token": registrationToken,
		"the upload token":       uploadToken,
		"the page's password":    password,
		"the password's hash":    strings.TrimSpace(string(hash)),
		"the secret key":         secretKey[strings.Index(secretKey, ":")+1:],
	} {
		for what, text := range map[string]string{"page": page, "event feed": feed, "JSON": data} {
			if strings.Contains(text, value) {
				t.Errorf("the status %s shows %s", what, name)
			}
		}
	}
}

// statusUser is who asks for the status page.
type statusUser struct{ user, password string }

func (u *statusUser) String() string {
	if u == nil {
		return "nobody"
	}
	return u.user
}

// statusGet GETs the status page as user. With events > 0 it reads that
// many server-sent events and stops.
func statusGet(t *testing.T, address string, user *statusUser, events int) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, address, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != nil {
		req.SetBasicAuth(user.user, user.password)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", address, err)
	}
	defer resp.Body.Close()
	if events == 0 || resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	var b strings.Builder
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(nil, 16<<20)
	for seen := 0; seen < events && scanner.Scan(); {
		b.WriteString(scanner.Text() + "\n")
		if scanner.Text() == "" && strings.Contains(b.String(), "event: ") {
			seen = strings.Count(b.String(), "event: ")
		}
	}
	return resp.StatusCode, b.String()
}

// storedNarSizes sums the NarSize of every narinfo in a cache directory.
func storedNarSizes(t *testing.T, root string) (sum int64, paths int) {
	t.Helper()
	narinfos, err := filepath.Glob(filepath.Join(root, "*.narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range narinfos {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^NarSize: (\d+)$`).FindSubmatch(data)
		if m == nil {
			t.Fatalf("%s has no NarSize", file)
		}
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		sum += n
		paths++
	}
	return sum, paths
}
