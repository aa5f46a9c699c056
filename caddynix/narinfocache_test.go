package caddynix

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

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
// then removed behind the cache's back: the very next answer follows the
// file, with a look at it on every request, or, while the directory is
// watched, without one.
func TestNarinfoFollowsItsFile(t *testing.T) {
	for _, watched := range []bool{false, true} {
		t.Run(map[bool]string{false: "stat", true: "watched"}[watched], func(t *testing.T) {
			h, _ := newTestHandler(t)
			counter := &statCounter{Store: h.store.(*dir.Store)}
			h.store = counter
			if !watched {
				h.store = unwatched{counter}
			}
			rewire(t, h)
			p := newTestPath(t, "c", "content")
			file := filepath.Join(h.root, p.hash+".narinfo")
			if err := os.WriteFile(file, []byte(p.narinfo("")), 0o644); err != nil {
				t.Fatal(err)
			}
			target := "/" + p.hash + ".narinfo"
			if rec := request(t, h, http.MethodGet, target); rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), "Deriver") {
				t.Fatalf("GET: %d\n%s", rec.Code, rec.Body)
			}
			before := counter.stats.Load()
			request(t, h, http.MethodGet, target)
			looks := counter.stats.Load() - before
			if watched && looks != 0 || !watched && looks != 1 {
				t.Fatalf("a second GET looked at the file %d times (watched: %v)", looks, watched)
			}

			deriver := "Deriver: " + p.hash + "-c.drv\n"
			if err := os.WriteFile(file, []byte(p.narinfo(deriver)), 0o644); err != nil {
				t.Fatal(err)
			}
			if rec := request(t, h, http.MethodGet, target); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), deriver) {
				t.Fatalf("GET after the file was rewritten: %d\n%s", rec.Code, rec.Body)
			}
			// Replaced by a rename, as nix copy --to file:// and uploads do.
			if err := os.WriteFile(file+".new", []byte(p.narinfo("")), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(file+".new", file); err != nil {
				t.Fatal(err)
			}
			if rec := request(t, h, http.MethodGet, target); rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), "Deriver") {
				t.Fatalf("GET after the file was replaced: %d\n%s", rec.Code, rec.Body)
			}
			if err := os.Remove(file); err != nil {
				t.Fatal(err)
			}
			if rec := request(t, h, http.MethodGet, target); rec.Code != http.StatusNotFound {
				t.Fatalf("GET after the file was removed: %d", rec.Code)
			}
		})
	}
}
