package caddystatus

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix"
	"github.com/cargoxx-pkgs/runner/caddynix/activity"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddyrunner"
	"github.com/cargoxx-pkgs/runner/caddyrunner/actionscache"
)

// provisioned is a handler provisioned in a context that ends with the
// test.
func provisioned(t testing.TB) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	h := new(Handler)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// busyHost is a host with a runner at work and one that cannot reach
// Gitea, finished jobs, a week of samples, and a cache that took pushes
// from that many runs and has that many pins.
func busyHost(pushes, pins int) Snapshot {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	started := now.Add(-3 * time.Minute)
	working := caddyrunner.RunnerStatus{Name: "builder", Instance: "https://git.example.org", Labels: []string{"nix:docker://job:1"},
		Capacity: 2, State: caddyrunner.StateRunning, LastPoll: &now,
		Running: []caddyrunner.JobStatus{{ID: 900, Repository: "evil/<script>alert(1)</script>", Workflow: "ci", Job: "build",
			Ref: "refs/heads/main", RunURL: "https://git.example.org/pkgs/main/actions/runs/900", Started: started}}}
	for i := range 60 {
		end := now.Add(-time.Duration(i) * time.Minute)
		working.Finished = append(working.Finished, caddyrunner.JobStatus{ID: int64(800 - i), Repository: "pkgs/main", Job: "build",
			Started: end.Add(-time.Minute), Finished: &end, Result: "success"})
	}
	retry := now.Add(4 * time.Second)
	unreachable := caddyrunner.RunnerStatus{Name: "offsite", Instance: "https://gitea.unreachable.example", Capacity: 1,
		State: caddyrunner.StateBackingOff, Error: "dial tcp: connection refused", Failures: 4, RetryAt: &retry,
		Running: []caddyrunner.JobStatus{}, Finished: []caddyrunner.JobStatus{}}

	recorder := new(activity.Recorder)
	for i := range 7 * 24 * 60 {
		recorder.Add(activity.Sample{At: now.Add(-activity.History + time.Duration(i)*time.Minute),
			Requests: int64(i * 30), NarinfoServed: int64(i * 9), NarinfoMissed: int64(i), Bytes: int64(i) << 20, Paths: i})
	}
	for i := range pushes {
		recorder.Pushed(activity.Push{Repository: "pkgs/main", RunID: fmt.Sprint(i), RunURL: fmt.Sprintf("https://git.example.org/pkgs/main/actions/runs/%d", i),
			Ref: "refs/heads/main", Tier: "trusted"}, 4096, now.Add(-time.Duration(pushes-i)*time.Second))
	}
	cache := caddynix.CacheStatus{Name: "main", Storage: "directory /srv/cache", PublicKeys: []string{"main-1:AAAA"},
		Paths: 10080, StoredBytes: 10 << 30, MaxSize: 50 << 30, Now: activity.Sample{At: now, Requests: 10080 * 30, NarinfoServed: 10080 * 9, NarinfoMissed: 10080, Bytes: 10 << 30, Paths: 10080},
		Samples: recorder.Samples(), Pushes: recorder.Pushes(), Pins: []retention.Pin{},
		LastCollection: &activity.Collection{At: now.Add(-time.Hour), Paths: 12000, Deleted: 1920, FreedBytes: 2 << 30, SizeAfter: 10 << 30, Protected: 1 << 30}}
	for i := range pins {
		cache.Pins = append(cache.Pins, retention.Pin{Name: fmt.Sprintf("release-%05d", i), StorePath: fmt.Sprintf("/nix/store/%032d-release", i)})
	}
	return Snapshot{Title: "CI host", Host: "ci", Generated: now,
		Runners: []caddyrunner.RunnerStatus{working, unreachable},
		Caches:  []caddynix.CacheStatus{cache},
		ActionsCaches: []actionscache.Status{{Name: "main", MaxSize: 10 << 30, Hits: 30, Misses: 10,
			Repositories: []actionscache.RepositoryUsage{{Repository: "pkgs/main", Entries: 3, Bytes: 1 << 30}}}},
	}
}

func TestAnEmptyHostRenders(t *testing.T) {
	h := provisioned(t)
	body, err := h.render("page.html", arrange(Snapshot{Title: "CI host", Generated: time.Now()}, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"No gitea_runner runs in this Caddy.", `id="no-running"`, `id="no-finished"`,
		"No nix_cache is served by this Caddy.", "No actions_cache is served by this Caddy."} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the empty page lacks %q", want)
		}
	}
}

func TestABusyHostRenders(t *testing.T) {
	h := provisioned(t)
	body, err := h.render("page.html", arrange(busyHost(10_000, 10_000), time.Second))
	if err != nil {
		t.Fatal(err)
	}
	page := string(body)
	for _, want := range []string{
		`data-runner="offsite" data-state="backing off"`, "dial tcp: connection refused", "4 failed polls; next try in 4s",
		`<tr class="job" data-task="900" data-state="running">`, `href="https://git.example.org/pkgs/main/actions/runs/900"`,
		"evil/&lt;script&gt;alert(1)&lt;/script&gt;", "3m0s",
		"10000 pinned closures; the first 100 by name:", "10 GiB of 50 GiB (20%)", "90.0% of",
		"1920 of 12000 paths deleted, 2.0 GiB freed", `href="https://git.example.org/pkgs/main/actions/runs/9999"`,
		"75.0% of 40", "pkgs/main</td><td>3</td><td>1.0 GiB</td><td>10%",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script>alert") {
		t.Error("a repository name is not escaped")
	}
	for what, want := range map[string]int{
		`data-state="finished"`: finishedShown, `<tr class="push">`: 50, "<li><code>release-": pinsShown, `<svg class="chart"`: 2,
	} {
		if got := strings.Count(page, what); got != want {
			t.Errorf("the page has %d of %s, want %d", got, what, want)
		}
	}
	for _, line := range strings.Split(page, `<polyline class="line" points="`)[1:] {
		points := strings.Count(line[:strings.Index(line, `"`)], ",")
		if points < 2 || points > chartPoints+1 {
			t.Errorf("a chart line has %d points", points)
		}
	}
}

func TestTheHandlerAnswers(t *testing.T) {
	h := provisioned(t)
	serve := func(method, target string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		err := h.ServeHTTP(w, httptest.NewRequest(method, target, nil), nil)
		if err != nil {
			w.Code = statusOf(err)
		}
		return w
	}
	for _, tc := range []struct {
		method, target string
		status         int
		contentType    string
	}{
		{http.MethodGet, "/status", http.StatusOK, "text/html; charset=utf-8"},
		{http.MethodHead, "/status", http.StatusOK, "text/html; charset=utf-8"},
		{http.MethodGet, "/status?format=json", http.StatusOK, "application/json"},
		{http.MethodGet, "/status?asset=status.css", http.StatusOK, "text/css; charset=utf-8"},
		{http.MethodGet, "/status?asset=status.js", http.StatusOK, "text/javascript; charset=utf-8"},
		{http.MethodGet, "/status?asset=../caddystatus.go", http.StatusNotFound, ""},
		{http.MethodGet, "/status?feed=websocket", http.StatusBadRequest, ""},
		{http.MethodGet, "/status?format=xml", http.StatusBadRequest, ""},
		{http.MethodPost, "/status", http.StatusMethodNotAllowed, ""},
	} {
		w := serve(tc.method, tc.target)
		if w.Code != tc.status || (tc.contentType != "" && w.Header().Get("Content-Type") != tc.contentType) {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.target, w.Code, w.Header().Get("Content-Type"), tc.status, tc.contentType)
		}
		if w.Code == http.StatusOK && !strings.Contains(w.Header().Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("%s %s: no Content-Security-Policy", tc.method, tc.target)
		}
	}
	var snapshot Snapshot
	if err := json.NewDecoder(serve(http.MethodGet, "/status?format=json").Body).Decode(&snapshot); err != nil || snapshot.Title != "CI host" {
		t.Fatalf("the JSON form: %+v, %v", snapshot, err)
	}
}

func TestTheEventFeedSendsThePage(t *testing.T) {
	h := provisioned(t)
	h.Refresh = caddy.Duration(10 * time.Millisecond)
	_, resp := openFeed(t, h)
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("the feed is %s", resp.Header.Get("Content-Type"))
	}
	scanner := bufio.NewScanner(resp.Body)
	events, data := 0, 0
	for events < 3 && scanner.Scan() {
		line := scanner.Text()
		switch {
		case line == "event: update":
			events++
		case strings.HasPrefix(line, "data: "):
			data++
		case line == "" || strings.HasPrefix(line, "id: ") || strings.HasPrefix(line, "retry: "):
		default:
			t.Fatalf("the feed sent a line that is not an event field: %q", line)
		}
	}
	if events < 3 || data < 3*10 {
		t.Fatalf("the feed sent %d events with %d data lines", events, data)
	}
}

func TestEventLinesAreDataFields(t *testing.T) {
	got := string(event("update", "7", []byte("<p>a</p>\r\n\n<p>b</p>")))
	want := "event: update\nid: 7\ndata: <p>a</p>\ndata: \ndata: <p>b</p>\n\n"
	if got != want {
		t.Fatalf("event:\n%q\nwant\n%q", got, want)
	}
}

// BenchmarkRenderBusyHost renders the page of a host whose cache took
// pushes from 10,000 runs and has 10,000 pins, with a week of samples and
// a full list of finished jobs.
func BenchmarkRenderBusyHost(b *testing.B) {
	h := provisioned(b)
	snapshot := busyHost(10_000, 10_000)
	var size int
	for b.Loop() {
		body, err := h.render("page.html", arrange(snapshot, time.Second))
		if err != nil {
			b.Fatal(err)
		}
		size = len(body)
	}
	b.ReportMetric(float64(size), "page-bytes")
}

// statusOf is the HTTP status a handler error stands for.
func statusOf(err error) int {
	var herr caddyhttp.HandlerError
	if errors.As(err, &herr) {
		return herr.StatusCode
	}
	return http.StatusInternalServerError
}

func TestTheEventFeedEndsWhenTheServerShutsDown(t *testing.T) {
	h := provisioned(t)
	server, resp := openFeed(t, h)
	defer resp.Body.Close()
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := server.Config.Shutdown(ctx); err != nil {
		t.Fatalf("the server did not shut down with a page open: %v", err)
	}
}

// openFeed serves h from a test server, which the test closes, and opens
// its event feed.
func openFeed(t *testing.T, h *Handler) (*httptest.Server, *http.Response) {
	t.Helper()
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Error(err)
		}
	}))
	t.Cleanup(server.Close)
	resp, err := http.Get(server.URL + "/?feed=events")
	if err != nil {
		t.Fatal(err)
	}
	return server, resp
}
