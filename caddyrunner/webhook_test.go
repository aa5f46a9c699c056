package caddyrunner

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

const testWebhookSecret = "s3cret"

func sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

// webhookServer serves a gitea_runner_webhook handler for d, answering
// Caddy's handler errors with their status as Caddy does.
func webhookServer(t *testing.T, d *daemon) *httptest.Server {
	t.Helper()
	app := &App{settings: d.settings(), running: new(atomic.Pointer[daemon])}
	app.running.Store(d)
	h := &WebhookHandler{MaxSize: 4096, app: app, logger: zap.NewNop()}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			var herr caddyhttp.HandlerError
			if !errors.As(err, &herr) {
				t.Errorf("the handler returned %v, not a handler error", err)
				herr.StatusCode = 500
			}
			w.WriteHeader(herr.StatusCode)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func postWebhook(t *testing.T, url, event, signature string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Gitea-Event", event)
	req.Header.Set("X-Gitea-Event-Type", event)
	if signature != "" {
		req.Header.Set("X-Gitea-Signature", signature)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// webhookDaemon is a test daemon that polls only every hour unless a
// webhook wakes it.
func webhookDaemon(t *testing.T, fake *fakeTaskService, task func(*runnerv1.Task)) *daemon {
	t.Helper()
	return testDaemonWith(t, fake, 1, task, func(s *settings) {
		s.webhook = &webhookSettings{secret: []byte(testWebhookSecret), pollInterval: time.Hour}
	})
}

func TestWebhookRefusesWhatGiteaDidNotSign(t *testing.T) {
	fake := newFakeTaskService()
	d := webhookDaemon(t, fake, func(*runnerv1.Task) {})
	srv := webhookServer(t, d)
	queued := []byte(`{"action":"queued","workflow_job":{"id":1,"run_id":1,"labels":["linux"]}}`)
	for name, c := range map[string]struct {
		event, signature string
		body             []byte
		want             int
	}{
		"unsigned":            {"workflow_job", "", queued, http.StatusUnauthorized},
		"forged":              {"workflow_job", sign("not the secret", queued), queued, http.StatusForbidden},
		"not hexadecimal":     {"workflow_job", "sha256=zz", queued, http.StatusForbidden},
		"oversized":           {"workflow_job", sign(testWebhookSecret, bytes.Repeat([]byte("x"), 5000)), bytes.Repeat([]byte("x"), 5000), http.StatusRequestEntityTooLarge},
		"push event":          {"push", sign(testWebhookSecret, []byte(`{}`)), []byte(`{}`), http.StatusNoContent},
		"job completed":       {"workflow_job", sign(testWebhookSecret, []byte(`{"action":"completed","workflow_job":{"labels":["linux"]}}`)), []byte(`{"action":"completed","workflow_job":{"labels":["linux"]}}`), http.StatusNoContent},
		"labels it lacks":     {"workflow_job", sign(testWebhookSecret, []byte(`{"action":"queued","workflow_job":{"labels":["linux","gpu"]}}`)), []byte(`{"action":"queued","workflow_job":{"labels":["linux","gpu"]}}`), http.StatusNoContent},
		"not JSON":            {"workflow_job", sign(testWebhookSecret, []byte(`action=queued`)), []byte(`action=queued`), http.StatusBadRequest},
		"sha256= prefix form": {"workflow_job", "sha256=" + sign(testWebhookSecret, queued), queued, http.StatusAccepted},
	} {
		if got := postWebhook(t, srv.URL, c.event, c.signature, c.body); got != c.want {
			t.Errorf("%s: got %d, want %d", name, got, c.want)
		}
	}
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("a GET got %d, want 405", resp.StatusCode)
	}
}

// TestWebhookWakesOnePoll: a queued job's webhook makes the runner ask at
// once, with tasks version 0, although its poll interval is an hour; a
// burst of webhooks never has two FetchTasks in flight and makes far fewer
// polls than webhooks.
func TestWebhookWakesOnePoll(t *testing.T) {
	fake := newFakeTaskService(fetchAnswer{version: 5})
	fake.delay = 5 * time.Millisecond
	ran := make(chan int64, 1)
	d := webhookDaemon(t, fake, func(task *runnerv1.Task) { ran <- task.Id })
	fake.waitFetches(t, 1)
	srv := webhookServer(t, d)
	body := []byte(`{"action":"queued","workflow_job":{"id":3,"run_id":2,"labels":["linux"]},"repository":{"full_name":"o/r"}}`)

	fake.mu.Lock()
	fake.script = append(fake.script, fetchAnswer{version: 6, task: &runnerv1.Task{Id: 42}})
	fake.mu.Unlock()
	if got := postWebhook(t, srv.URL, "workflow_job", sign(testWebhookSecret, body), body); got != http.StatusAccepted {
		t.Fatalf("a queued job's webhook got %d, want 202", got)
	}
	select {
	case id := <-ran:
		if id != 42 {
			t.Fatalf("ran task %d, want 42", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the webhook did not make the runner fetch the job")
	}
	if asked, _ := fake.calls(); asked[1] != 0 {
		t.Fatalf("the poll a webhook woke asked with tasks version %d, want 0", asked[1])
	}
	if st := d.status(); st.TasksFetched["webhook"] != 1 || st.LastWebhook == nil {
		t.Fatalf("status %+v, want one task fetched by webhook and the webhook's time", st)
	}

	before, _ := fake.calls()
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := postWebhook(t, srv.URL, "workflow_job", sign(testWebhookSecret, body), body); got != http.StatusAccepted {
				t.Errorf("a webhook in the burst got %d", got)
			}
		}()
	}
	wg.Wait()
	time.Sleep(100 * time.Millisecond)
	after, _ := fake.calls()
	polls := len(after) - len(before)
	if polls < 1 || polls >= 100 {
		t.Fatalf("1000 webhooks made %d polls, want at least one and far fewer than webhooks", polls)
	}
	if most := fake.mostInFlight.Load(); most != 1 {
		t.Fatalf("%d FetchTasks were in flight at once, want 1", most)
	}
	if st := d.status(); st.LastError != "" {
		t.Fatalf("the runner reports an error: %s", st.LastError)
	}
}
