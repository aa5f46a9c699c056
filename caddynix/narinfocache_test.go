package caddynix

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
)

// statCounter counts the looks at a cache directory's files.
type statCounter struct {
	*dir.Store
	stats atomic.Int64
}

func (s *statCounter) Stat(ctx context.Context, name string) (storage.Info, error) {
	s.stats.Add(1)
	return s.Store.Stat(ctx, name)
}

// unwatched hides that a storage can be watched.
type unwatched struct{ storage.Store }

// TestNarinfoFollowsItsFile serves a narinfo whose file is rewritten and
// then removed behind the cache's back: the answer follows the file, with
// a look at it on every request, or, while the directory is watched,
// without one.
func TestNarinfoFollowsItsFile(t *testing.T) {
	for _, watched := range []bool{false, true} {
		t.Run(map[bool]string{false: "stat", true: "watched"}[watched], func(t *testing.T) {
			h, _ := newTestHandler(t)
			counter := &statCounter{Store: h.store.(*dir.Store)}
			h.store = unwatched{counter}
			if watched {
				h.store = counter
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); h.watchNarinfos(ctx) }()
				t.Cleanup(func() { cancel(); <-done })
				waitFor(t, "the watch to start", func() bool { return h.narinfos.watched.Load() })
			}
			p := newTestPath(t, "c", "content")
			file := filepath.Join(h.root, p.hash+".narinfo")
			if err := os.WriteFile(file, []byte(p.narinfo("")), 0o644); err != nil {
				t.Fatal(err)
			}
			target := "/" + p.hash + ".narinfo"
			if rec := serve(t, h, http.MethodGet, target); rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), "Deriver") {
				t.Fatalf("GET: %d\n%s", rec.Code, rec.Body)
			}
			before := counter.stats.Load()
			serve(t, h, http.MethodGet, target)
			looks := counter.stats.Load() - before
			if watched && looks != 0 || !watched && looks != 1 {
				t.Fatalf("a second GET looked at the file %d times (watched: %v)", looks, watched)
			}

			deriver := "Deriver: " + p.hash + "-c.drv\n"
			if err := os.WriteFile(file, []byte(p.narinfo(deriver)), 0o644); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the rewritten narinfo to be served", func() bool {
				rec := serve(t, h, http.MethodGet, target)
				return rec.Code == http.StatusOK && strings.Contains(rec.Body.String(), deriver)
			})
			if err := os.Remove(file); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the removed narinfo to be missing", func() bool {
				return serve(t, h, http.MethodGet, target).Code == http.StatusNotFound
			})
		})
	}
}

// waitFor polls cond for up to five seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
