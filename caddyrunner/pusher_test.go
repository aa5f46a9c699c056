package caddyrunner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/cargoxx-pkgs/runner/internal/nixstore/nixstoretest"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// fakeCache is a cache's upload URL as the pusher sees it, with the rules
// that shape a push: the job's credential, NARs whose name is their
// hash, narinfos that match their NAR and come after their references'.
// The real cache is in the e2e tests.
type fakeCache struct {
	t        *testing.T
	mu       sync.Mutex
	requests []string
	narinfos map[string]bool // hash parts
	nars     map[string][32]byte
	// failPuts answers this many PUTs with 503 before taking them.
	failPuts int
	// refuse answers every PUT with 409.
	refuse bool
}

func (c *fakeCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	name := strings.TrimPrefix(r.URL.Path, "/upload/")
	c.requests = append(c.requests, r.Method+" "+name)
	if user, pass, _ := r.BasicAuth(); user != "job" || pass != "job-token" {
		http.Error(w, "no credential", http.StatusUnauthorized)
		return
	}
	hash := strings.TrimSuffix(name, ".narinfo")
	switch {
	case r.Method == http.MethodGet:
		if !c.narinfos[hash] {
			http.NotFound(w, r)
		}
	case c.refuse:
		http.Error(w, "the cache is full", http.StatusConflict)
	case c.failPuts > 0:
		c.failPuts--
		http.Error(w, "try again", http.StatusServiceUnavailable)
	case strings.HasPrefix(name, "nar/"):
		body, _ := io.ReadAll(r.Body)
		if sum := sha256.Sum256(body); "nar/"+nixbase32.EncodeToString(sum[:])+".nar.zst" != name {
			http.Error(w, "the NAR's name is not its hash", http.StatusBadRequest)
			return
		}
		var plain []byte
		decoder, err := zstd.NewReader(nil)
		if err == nil {
			plain, err = decoder.DecodeAll(body, nil)
			decoder.Close()
		}
		if err == nil {
			err = nixfmt.CheckNar(bytes.NewReader(plain))
		}
		if err != nil {
			http.Error(w, "not a zstd NAR: "+err.Error(), http.StatusBadRequest)
			return
		}
		c.nars[name] = sha256.Sum256(plain)
	default:
		info, err := narinfo.Parse(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		narHash, ok := c.nars[info.URL]
		if !ok || !bytes.Equal(narHash[:], info.NarHash.Digest()) || info.Compression != "zstd" {
			http.Error(w, "the narinfo does not match a stored NAR", http.StatusBadRequest)
			return
		}
		for _, ref := range info.References {
			if refHash := hashPart(ref); refHash != hash && !c.narinfos[refHash] {
				http.Error(w, "reference "+ref+" is not in the cache", http.StatusBadRequest)
				return
			}
		}
		c.narinfos[hash] = true
	}
}

// testPusher is a pusher of store's paths to cache.
func testPusher(t *testing.T, store *nixstoretest.Store, cache *fakeCache) *storePusher {
	t.Helper()
	server := httptest.NewServer(cache)
	t.Cleanup(server.Close)
	root, err := os.OpenRoot(store.Root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Close() })
	db, err := nixstore.OpenDB(context.Background(), store.Database, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return &storePusher{client: server.Client(), uploadURL: server.URL + "/upload", token: "job-token",
		db: db, root: root, tempDir: t.TempDir(), present: map[string]bool{}}
}

func newFakeCache(t *testing.T) *fakeCache {
	return &fakeCache{t: t, narinfos: map[string]bool{}, nars: map[string][32]byte{}}
}

// A path's references go before it, what the cache has is not sent, and
// what was pushed is not asked for again.
func TestPusherSendsReferencesFirstAndOnlyWhatIsNew(t *testing.T) {
	store := nixstoretest.New(t,
		nixstoretest.Path{Name: "base"},
		nixstoretest.Path{Name: "lib", Files: map[string]string{"lib/libx.so": "elf", "bin/tool*": "#!/bin/sh\n", "share/link": "-> ../lib"}, References: []int{0}},
		nixstoretest.Path{Name: "app", References: []int{0, 1}},
	)
	cache := newFakeCache(t)
	base, lib, app := hashPart(store.Paths[0]), hashPart(store.Paths[1]), hashPart(store.Paths[2])
	cache.narinfos[base] = true
	p := testPusher(t, store, cache)

	had, err := p.push(context.Background(), store.Paths[2])
	if err != nil || had {
		t.Fatalf("push = %v, %v; want a new path pushed", had, err)
	}
	// References are asked for in their order by name.
	refs := []string{"GET " + lib, "GET " + base}
	slices.Sort(refs)
	want := append(append([]string{"GET " + app}, refs...), "PUT nar/", "PUT "+lib, "PUT nar/", "PUT "+app)
	if got := shortRequests(cache.requests); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("requests %v, want %v", got, want)
	}
	if !cache.narinfos[lib] || !cache.narinfos[app] {
		t.Fatal("the cache did not take the new paths")
	}

	// Pushed once, known since: no request at all.
	cache.requests = nil
	if had, err := p.push(context.Background(), store.Paths[1]); err != nil || !had || len(cache.requests) != 0 {
		t.Fatalf("pushing a pushed path: %v, %v, requests %v", had, err, cache.requests)
	}
}

// shortRequests names each NAR upload "PUT nar/" and each narinfo by its
// hash part.
func shortRequests(requests []string) []string {
	out := make([]string, len(requests))
	for i, r := range requests {
		method, name, _ := strings.Cut(r, " ")
		if strings.HasPrefix(name, "nar/") {
			name = "nar/"
		}
		out[i] = method + " " + strings.TrimSuffix(name, ".narinfo")
	}
	return out
}

func TestPusherRetriesAServerErrorAndReportsARefusal(t *testing.T) {
	store := nixstoretest.New(t, nixstoretest.Path{Name: "one"})
	cache := newFakeCache(t)
	cache.failPuts = 2
	p := testPusher(t, store, cache)
	if _, err := p.push(context.Background(), store.Paths[0]); err != nil {
		t.Fatalf("two 503s then success: %v", err)
	}

	store = nixstoretest.New(t, nixstoretest.Path{Name: "two"})
	cache = newFakeCache(t)
	cache.refuse = true
	p = testPusher(t, store, cache)
	_, err := p.push(context.Background(), store.Paths[0])
	if err == nil || !strings.Contains(err.Error(), "409 Conflict") || !strings.Contains(err.Error(), "the cache is full") || !strings.Contains(err.Error(), store.Paths[0]) {
		t.Fatalf("a refused upload: err = %v, want the path, the status and the cache's reason", err)
	}
}

// A path whose files no longer make the NAR Nix registered is not sent.
func TestPusherRefusesAChangedPath(t *testing.T) {
	store := nixstoretest.New(t, nixstoretest.Path{Name: "changed", Files: map[string]string{"f": "before"}})
	if err := os.WriteFile(store.FSPath(store.Paths[0])+"/f", []byte("after!"), 0o644); err != nil {
		t.Fatal(err)
	}
	cache := newFakeCache(t)
	p := testPusher(t, store, cache)
	_, err := p.push(context.Background(), store.Paths[0])
	if err == nil || !strings.Contains(err.Error(), "do not match its registration") {
		t.Fatalf("a changed path: err = %v", err)
	}
	for _, r := range cache.requests {
		if strings.HasPrefix(r, "PUT") {
			t.Fatalf("a changed path was sent: %v", cache.requests)
		}
	}
}
