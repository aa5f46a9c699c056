package harness

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"sync"
	"testing"
)

// RPCCounter is a reverse proxy in front of Gitea that counts the runner
// RPCs passing through it, by method (FetchTask, UpdateTask, …), and the
// most of each that were in flight at once. Point a runner's instance at
// URL.
type RPCCounter struct {
	URL string

	mu       sync.Mutex
	total    map[string]int
	inFlight map[string]int
	most     map[string]int
}

// StartRPCCounter starts a counting proxy for the Gitea at target.
func StartRPCCounter(t testing.TB, target string) *RPCCounter {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &RPCCounter{total: map[string]int{}, inFlight: map[string]int{}, most: map[string]int{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/runner.v1.RunnerService/") {
			proxy.ServeHTTP(w, r)
			return
		}
		method := path.Base(r.URL.Path)
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
