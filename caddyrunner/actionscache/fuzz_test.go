package actionscache

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// FuzzRequests sends the cache arbitrary requests of a job, after it
// reserved an entry whose id replaces {id}: whatever a client sends, the
// handler neither panics nor answers 5xx.
func FuzzRequests(f *testing.F) {
	c := newTestCache(f, nil)
	j, release := c.job("fuzz-token", mainScope("pkgs/main"))
	defer release()
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodPut, http.MethodHead, http.MethodDelete}
	f.Add(uint8(0), "cache", "keys=a,b&version=1", "", []byte(nil), true)
	f.Add(uint8(0), "caches", "key=a", "", []byte(nil), true)
	f.Add(uint8(1), "caches", "", "", []byte(`{"key":"k","version":"1","cacheSize":4}`), true)
	f.Add(uint8(2), "caches/{id}", "", "bytes 0-3/*", []byte("1234"), true)
	f.Add(uint8(2), "caches/{id}", "", "bytes 2-1/*", []byte("1234"), true)
	f.Add(uint8(1), "caches/{id}", "", "", []byte(`{"size":4}`), true)
	f.Add(uint8(0), "artifacts/{id}", "expires=1&sig=x", "", []byte(nil), false)
	f.Add(uint8(1), "caches", "", "", []byte(`{"key":"k"`), false)
	var reservations atomic.Int64
	f.Fuzz(func(t *testing.T, method uint8, resource, query, contentRange string, body []byte, authorized bool) {
		id := reserve(t, c.srv.URL+"/prefix/_apis/artifactcache/caches", j.token, fmt.Sprintf("fuzz-%d", reservations.Add(1)), len(body))
		target := c.srv.URL + "/prefix/_apis/artifactcache/" + strings.ReplaceAll(resource, "{id}", id)
		if query != "" {
			target += "?" + query
		}
		req, err := http.NewRequest(methods[int(method)%len(methods)], target, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		if contentRange != "" {
			req.Header.Set("Content-Range", contentRange)
		}
		if authorized {
			req.Header.Set("Authorization", "Bearer "+j.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return // Go's client refused to send it
		}
		_ = resp.Body.Close()
		if resp.StatusCode >= 500 {
			t.Fatalf("%s %s with Content-Range %q and a body of %d bytes: %s", req.Method, target, contentRange, len(body), resp.Status)
		}
	})
}

// reserve reserves an entry of key and size and returns its id.
func reserve(t *testing.T, url, token, key string, size int) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(fmt.Sprintf(`{"key":%q,"version":"1","cacheSize":%d}`, key, size)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var reply struct{ CacheID int64 }
	if err := json.NewDecoder(resp.Body).Decode(&reply); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("reserving %s: %s, %v", key, resp.Status, err)
	}
	return fmt.Sprint(reply.CacheID)
}
