package actionscache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
)

// TestMain keeps the tests' caches out of the user's data directory.
func TestMain(m *testing.M) {
	data, err := os.MkdirTemp("", "actionscache-test-data-")
	if err != nil {
		panic(err)
	}
	if err := os.Setenv("XDG_DATA_HOME", data); err != nil {
		panic(err)
	}
	code := m.Run()
	_ = os.RemoveAll(data)
	os.Exit(code)
}

// testCache is a provisioned handler behind a test server, with the
// client side of the protocol.
type testCache struct {
	t       testing.TB
	h       *Handler
	srv     *httptest.Server
	root    string
	access  *Access
	cleanup func()
}

func newTestCache(t testing.TB, configure func(*Handler)) *testCache {
	t.Helper()
	root := filepath.Join(t.TempDir(), "cache")
	return openTestCache(t, root, configure)
}

func openTestCache(t testing.TB, root string, configure func(*Handler)) *testCache {
	t.Helper()
	h := &Handler{Name: "test-" + strings.ReplaceAll(t.Name(), "/", "-"), URL: "http://cache.invalid/", Root: root}
	if configure != nil {
		configure(h)
	}
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next := caddyHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			http.Error(w, "next handler", http.StatusTeapot)
			return nil
		})
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	access, err := Lookup(h.Name)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCache{t: t, h: h, srv: srv, root: root, access: access}
	c.cleanup = func() {
		srv.Close()
		if err := h.Cleanup(); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() {
		if c.cleanup != nil {
			c.cleanup()
		}
	})
	return c
}

// close stops the cache now, as a config without it would.
func (c *testCache) close() {
	c.cleanup()
	c.cleanup = nil
}

type caddyHandlerFunc func(http.ResponseWriter, *http.Request) error

func (f caddyHandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// job is a job's client of the cache.
type job struct {
	c     *testCache
	token string
	base  string
}

func (c *testCache) job(token string, scope Scope) (*job, func()) {
	release := c.access.Admit(token, scope)
	return &job{c: c, token: token, base: c.srv.URL + "/prefix/"}, release
}

func mainScope(repo string) Scope {
	return Scope{Repository: repo, WriteRef: "refs/heads/main", ReadRefs: []string{"refs/heads/main"}}
}

func pullScope(repo string, n int) Scope {
	ref := fmt.Sprintf("refs/pull/%d/head", n)
	return Scope{Repository: repo, WriteRef: ref, ReadRefs: []string{ref, "refs/heads/main"}}
}

// do sends a request and returns the status and body.
func (j *job) do(method, resource string, body io.Reader, header http.Header) (int, []byte) {
	j.c.t.Helper()
	req, err := http.NewRequest(method, j.base+"_apis/artifactcache/"+resource, body)
	if err != nil {
		j.c.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if j.token != "" {
		req.Header.Set("Authorization", "Bearer "+j.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		j.c.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		j.c.t.Fatal(err)
	}
	return resp.StatusCode, data
}

func (j *job) reserve(key, version string, size int) (int, int64) {
	j.c.t.Helper()
	body := fmt.Sprintf(`{"key":%q,"version":%q,"cacheSize":%d}`, key, version, size)
	status, data := j.do(http.MethodPost, "caches", strings.NewReader(body), http.Header{"Content-Type": {"application/json"}})
	var reply struct{ CacheID int64 }
	_ = json.Unmarshal(data, &reply)
	return status, reply.CacheID
}

func (j *job) chunk(id int64, start int, data []byte) int {
	j.c.t.Helper()
	status, _ := j.do(http.MethodPatch, fmt.Sprintf("caches/%d", id), bytes.NewReader(data),
		http.Header{"Content-Range": {fmt.Sprintf("bytes %d-%d/*", start, start+len(data)-1)}})
	return status
}

func (j *job) commit(id int64, size int) int {
	j.c.t.Helper()
	status, _ := j.do(http.MethodPost, fmt.Sprintf("caches/%d", id), strings.NewReader(fmt.Sprintf(`{"size":%d}`, size)), nil)
	return status
}

// save stores data under key in chunks of chunkSize sent in reverse order,
// two at a time, as @actions/cache sends them in parallel.
func (j *job) save(key, version string, data []byte, chunkSize int) {
	j.c.t.Helper()
	status, id := j.reserve(key, version, len(data))
	if status != http.StatusOK {
		j.c.t.Fatalf("reserving %s: %d", key, status)
	}
	var starts []int
	for start := 0; start < len(data); start += chunkSize {
		starts = append([]int{start}, starts...)
	}
	var wg sync.WaitGroup
	limit := make(chan struct{}, 2)
	for _, start := range starts {
		wg.Add(1)
		limit <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-limit }()
			end := min(start+chunkSize, len(data))
			if status := j.chunk(id, start, data[start:end]); status != http.StatusNoContent {
				j.c.t.Errorf("chunk at %d: %d", start, status)
			}
		}()
	}
	wg.Wait()
	if status := j.commit(id, len(data)); status != http.StatusOK {
		j.c.t.Fatalf("committing %s: %d", key, status)
	}
}

// restore looks keys up and downloads the hit; it returns the key found,
// or "" on a miss.
func (j *job) restore(version string, keys ...string) (string, []byte) {
	j.c.t.Helper()
	status, body := j.do(http.MethodGet, "cache?keys="+strings.Join(keys, ",")+"&version="+version, nil, nil)
	if status == http.StatusNoContent {
		return "", nil
	}
	if status != http.StatusOK {
		j.c.t.Fatalf("lookup: %d %s", status, body)
	}
	var hit struct{ Result, ArchiveLocation, CacheKey string }
	if err := json.Unmarshal(body, &hit); err != nil || hit.Result != "hit" {
		j.c.t.Fatalf("lookup answered %s", body)
	}
	if !strings.HasPrefix(hit.ArchiveLocation, j.base) {
		j.c.t.Fatalf("the archive %s is not below the URL the job used, %s", hit.ArchiveLocation, j.base)
	}
	resp, err := http.Get(hit.ArchiveLocation) // no token: the URL is signed
	if err != nil {
		j.c.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		j.c.t.Fatalf("downloading %s: %d %s", hit.ArchiveLocation, resp.StatusCode, data)
	}
	return hit.CacheKey, data
}

const version = "8f4c3b1e0f6e4b8d"

func randomData(t *testing.T, n int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*7 + i/251)
	}
	return data
}

func TestSaveAndRestore(t *testing.T) {
	c := newTestCache(t, nil)
	saver, release := c.job("token-a", mainScope("pkgs/main"))
	data := randomData(t, 1<<20+123)
	saver.save("linux-deps-abc", version, data, 64<<10)
	release()

	restorer, release := c.job("token-b", mainScope("pkgs/main"))
	defer release()
	key, got := restorer.restore(version, "linux-deps-abc")
	if key != "linux-deps-abc" || !bytes.Equal(got, data) {
		t.Fatalf("restored %q with %d bytes, want the %d bytes saved", key, len(got), len(data))
	}
	// A restore key is a prefix; the newest entry that starts with it wins.
	restorer2, release2 := c.job("token-c", mainScope("pkgs/main"))
	defer release2()
	restorer2.save("linux-deps-def", version, []byte("newer"), 3)
	if key, _ := restorer.restore(version, "linux-deps-xyz", "linux-deps-"); key != "linux-deps-def" {
		t.Errorf("the prefix linux-deps- restored %q, want the newest entry", key)
	}
	if key, _ := restorer.restore("otherversion", "linux-deps-abc"); key != "" {
		t.Errorf("another version restored %q", key)
	}

	// Entries outlive the configuration that saved them.
	c.close()
	c2 := openTestCache(t, c.root, nil)
	later, release3 := c2.job("token-d", mainScope("pkgs/main"))
	defer release3()
	if key, got := later.restore(version, "linux-deps-abc"); key != "linux-deps-abc" || !bytes.Equal(got, data) {
		t.Errorf("after a restart, restored %q with %d bytes", key, len(got))
	}
}

func TestScope(t *testing.T) {
	c := newTestCache(t, nil)
	mainJob, r1 := c.job("main", mainScope("pkgs/main"))
	defer r1()
	prJob, r2 := c.job("pr", pullScope("pkgs/main", 7))
	defer r2()
	otherRepo, r3 := c.job("other", mainScope("pkgs/other"))
	defer r3()

	mainJob.save("shared", version, []byte("from main"), 4)
	prJob.save("pr-only", version, []byte("from the pull request"), 4)

	if key, data := prJob.restore(version, "shared"); key != "shared" || string(data) != "from main" {
		t.Errorf("the pull request restored %q %q, want the default branch's entry", key, data)
	}
	if key, _ := mainJob.restore(version, "pr-only"); key != "" {
		t.Errorf("the default branch restored the pull request's entry %q", key)
	}
	if key, _ := otherRepo.restore(version, "shared"); key != "" {
		t.Errorf("another repository restored %q", key)
	}
	// The job's own ref comes before the default branch.
	prJob.save("shared", version, []byte("from the pull request"), 4)
	if _, data := prJob.restore(version, "shared"); string(data) != "from the pull request" {
		t.Errorf("the pull request restored %q, want its own entry first", data)
	}
	if _, data := mainJob.restore(version, "shared"); string(data) != "from main" {
		t.Errorf("the default branch restored %q, want its own entry", data)
	}
}

func TestTokens(t *testing.T) {
	c := newTestCache(t, nil)
	live, release := c.job("live-token", mainScope("pkgs/main"))
	status, id := live.reserve("k", version, 4)
	if status != http.StatusOK {
		t.Fatalf("reserve: %d", status)
	}
	for _, token := range []string{"", "wrong-token"} {
		j := &job{c: c, token: token, base: live.base}
		if status, _ := j.do(http.MethodGet, "cache?keys=k&version="+version, nil, nil); status != http.StatusUnauthorized {
			t.Errorf("lookup with token %q: %d, want 401", token, status)
		}
		if status := j.chunk(id, 0, []byte("data")); status != http.StatusUnauthorized {
			t.Errorf("chunk with token %q: %d, want 401", token, status)
		}
	}
	release()
	if status, _ := live.do(http.MethodGet, "cache?keys=k&version="+version, nil, nil); status != http.StatusUnauthorized {
		t.Errorf("a finished job's token: %d, want 401", status)
	}
	// The job's unfinished upload went with it.
	again, release := c.job("live-token", mainScope("pkgs/main"))
	defer release()
	if status := again.commit(id, 4); status != http.StatusNotFound {
		t.Errorf("committing a finished job's upload: %d, want 404", status)
	}
	if files, _ := os.ReadDir(filepath.Join(c.root, entriesDir)); len(files) != 0 {
		t.Errorf("a finished job's upload left %d files", len(files))
	}
	// Requests outside the API go to the next handler.
	resp, err := http.Get(c.srv.URL + "/nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot {
		t.Errorf("a request outside the API got %d, want the next handler's", resp.StatusCode)
	}
}

// storedNames lists the files below the cache's entries directory, but for
// the uploads in progress.
func storedNames(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, entriesDir))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), dir.TempPrefix) {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestBadInput(t *testing.T) {
	c := newTestCache(t, func(h *Handler) { h.MaxSize = 1 << 20 })
	j, release := c.job("job", mainScope("pkgs/main"))
	defer release()
	other, release2 := c.job("other", mainScope("pkgs/other"))
	defer release2()
	j.save("kept", version, []byte("kept entry"), 5)
	before := storedNames(t, c.root)

	_, open := j.reserve("open", version, 8)
	_, otherOpen := other.reserve("theirs", version, 8)
	tests := []struct {
		name string
		send func() int
		want int
	}{
		{"empty key", func() int { s, _ := j.reserve("", version, 1); return s }, 400},
		{"key with a comma", func() int { s, _ := j.reserve("a,b", version, 1); return s }, 400},
		{"key too long", func() int { s, _ := j.reserve(strings.Repeat("k", 513), version, 1); return s }, 400},
		{"bad version", func() int { s, _ := j.reserve("k", "../../x", 1); return s }, 400},
		{"lookup with a bad version", func() int { s, _ := j.do("GET", "cache?keys=kept&version=a/b", nil, nil); return s }, 400},
		{"larger than max_size", func() int { s, _ := j.reserve("big", version, 2<<20); return s }, 400},
		{"existing key", func() int { s, _ := j.reserve("kept", version, 10); return s }, 409},
		{"not JSON", func() int { s, _ := j.do("POST", "caches", strings.NewReader("{"), nil); return s }, 400},
		{"chunk past the reserve", func() int { return j.chunk(open, 4, []byte("12345")) }, 400},
		{"chunk without a range", func() int {
			s, _ := j.do("PATCH", fmt.Sprintf("caches/%d", open), strings.NewReader("x"), nil)
			return s
		}, 400},
		{"body longer than its range", func() int {
			s, _ := j.do("PATCH", fmt.Sprintf("caches/%d", open), strings.NewReader("123456"), http.Header{"Content-Range": {"bytes 0-3/*"}})
			return s
		}, 400},
		{"body shorter than its range", func() int {
			s, _ := j.do("PATCH", fmt.Sprintf("caches/%d", open), strings.NewReader("12"), http.Header{"Content-Range": {"bytes 0-3/*"}})
			return s
		}, 400},
		{"commit with a gap", func() int { j.chunk(open, 4, []byte("5678")); return j.commit(open, 8) }, 400},
		{"commit of another size", func() int { return j.commit(open, 4) }, 400},
		{"commit of an unreserved id", func() int { return j.commit(12345, 4) }, 404},
		{"chunk for another repository", func() int { return j.chunk(otherOpen, 0, []byte("1234")) }, 404},
		{"commit for another repository", func() int { return j.commit(otherOpen, 8) }, 404},
		{"not an id", func() int { return j.commit(0, 1) }, 404},
		{"unknown resource", func() int { s, _ := j.do("DELETE", "caches/1", nil, nil); return s }, 404},
		{"forged download", func() int {
			resp, err := http.Get(j.base + "_apis/artifactcache/artifacts/1?expires=99999999999&signature=00")
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			return resp.StatusCode
		}, 403},
		{"expired download", func() int {
			var id int64
			for _, e := range c.h.entries.entries {
				id = e.ID
			}
			expires := time.Now().Add(-time.Minute).Unix()
			resp, err := http.Get(fmt.Sprintf("%s_apis/artifactcache/artifacts/%d?expires=%d&signature=%s", j.base, id, expires, c.h.signer.sign(id, expires)))
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			return resp.StatusCode
		}, 403},
	}
	for _, tt := range tests {
		if got := tt.send(); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
	if after := storedNames(t, c.root); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("bad requests changed what is stored: %v, then %v", before, after)
	}
	if key, data := j.restore(version, "kept"); key != "kept" || string(data) != "kept entry" {
		t.Errorf("the entry saved before is now %q %q", key, data)
	}
}

func TestRetention(t *testing.T) {
	c := newTestCache(t, func(h *Handler) {
		h.MaxSize = 100
		h.MaxAge = caddy.Duration(time.Hour)
	})
	j, release := c.job("job", mainScope("pkgs/main"))
	defer release()
	other, release2 := c.job("other", mainScope("pkgs/other"))
	defer release2()
	j.save("one", version, make([]byte, 40), 40)
	j.save("two", version, make([]byte, 40), 40)
	other.save("theirs", version, make([]byte, 90), 90)
	// A restore makes "one" the most recently used, so "two" goes when a
	// third entry passes the repository's max_size; the other repository
	// has a max_size of its own.
	time.Sleep(10 * time.Millisecond)
	if key, _ := j.restore(version, "one"); key != "one" {
		t.Fatalf("restore: %q", key)
	}
	j.save("three", version, make([]byte, 40), 40)
	for key, want := range map[string]bool{"one": true, "two": false, "three": true} {
		if got, _ := j.restore(version, key); (got == key) != want {
			t.Errorf("after passing max_size, entry %s kept: %v, want %v", key, got == key, want)
		}
	}
	if key, _ := other.restore(version, "theirs"); key != "theirs" {
		t.Error("another repository's entry went")
	}
	if n := len(storedNames(t, c.root)); n != 2*3 {
		t.Errorf("%d files stored, want 3 entries of two files each", n)
	}

	// Entries unused for max_age go.
	c.h.entries.prune(t.Context(), c.h.keep, time.Now().Add(2*time.Hour))
	if key, _ := j.restore(version, "one"); key != "" {
		t.Error("an entry unused for longer than max_age was kept")
	}
	if n := len(storedNames(t, c.root)); n != 0 {
		t.Errorf("%d files left after every entry expired", n)
	}
}
