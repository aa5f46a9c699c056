package harness

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// RPCCounter is a reverse proxy in front of Gitea that counts the runner
// RPCs passing through it, by method (FetchTask, UpdateTask, …), and the
// most of each that were in flight at once. Point a runner's instance at
// URL. Cut makes it drop every request, as a network cut would.
type RPCCounter struct {
	URL string

	mu       sync.Mutex
	total    map[string]int
	inFlight map[string]int
	most     map[string]int
	cut      bool
	// dropped are when each RPC was tried while cut, by method.
	dropped map[string][]time.Time
}

// Cut drops every request from now on (the connection is closed without
// an answer) until Restore.
func (c *RPCCounter) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
}

// Restore lets requests through again.
func (c *RPCCounter) Restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = false
}

// Dropped returns when calls of method were tried while cut.
func (c *RPCCounter) Dropped(method string) []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.dropped[method])
}

// StartRPCCounter starts a counting proxy for the Gitea at target.
func StartRPCCounter(t testing.TB, target string) *RPCCounter {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &RPCCounter{total: map[string]int{}, inFlight: map[string]int{}, most: map[string]int{}, dropped: map[string][]time.Time{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method := path.Base(r.URL.Path)
		c.mu.Lock()
		if c.cut {
			c.dropped[method] = append(c.dropped[method], time.Now())
			c.mu.Unlock()
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = conn.Close()
			}
			return
		}
		c.mu.Unlock()
		if !strings.Contains(r.URL.Path, "/runner.v1.RunnerService/") {
			proxy.ServeHTTP(w, r)
			return
		}
		c.mu.Lock()
		c.total[method]++
		c.inFlight[method]++
		c.most[method] = max(c.most[method], c.inFlight[method])
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			c.inFlight[method]--
			c.mu.Unlock()
		}()
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c.URL = srv.URL + "/"
	return c
}

// Count is how many calls of method went through so far.
func (c *RPCCounter) Count(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total[method]
}

// MostInFlight is the most calls of method that were in flight at once.
func (c *RPCCounter) MostInFlight(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.most[method]
}
