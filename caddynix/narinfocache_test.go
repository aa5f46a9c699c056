package caddynix

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/retention"
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

// announceableStore is storage that several nodes share, whose reads of
// the collection announcement fail while failing is set.
type announceableStore struct {
	*statCounter
	failing atomic.Bool
}

func (s *announceableStore) Open(ctx context.Context, name string) (storage.Object, storage.Info, error) {
	if name == retention.AnnouncementName && s.failing.Load() {
		return nil, storage.Info{}, errors.New("the S3 server is down")
	}
	return s.statCounter.Open(ctx, name)
}

func (*announceableStore) TryLease(context.Context, string, string, time.Duration) (bool, string, error) {
	return true, "", nil
}

func (*announceableStore) ReleaseLease(context.Context, string, string) error { return nil }

// TestNarinfoOnSharedStorage serves narinfos from storage that several
// nodes share from memory, without a look at the storage, and never
// serves one that a collection on another node deleted: the collection's
// announcement makes every request for what it names look again, also
// when this node saw no request while it stood, and when the announcement
// cannot be read. A narinfo deleted behind every node's back is served
// for a gc_grace at most.
func TestNarinfoOnSharedStorage(t *testing.T) {
	const grace = 2 * time.Second
	h, _ := newTestHandler(t)
	store := &announceableStore{statCounter: &statCounter{Store: h.store.(*dir.Store)}}
	h.store, h.gcGrace = store, grace
	rewire(t, h)
	publish := func(name string) (target, file string) {
		t.Helper()
		p := newTestPath(t, name, "content of "+name)
		file = filepath.Join(h.root, p.hash+".narinfo")
		if err := os.WriteFile(file, []byte(p.narinfo("")), 0o644); err != nil {
			t.Fatal(err)
		}
		return "/" + p.hash + ".narinfo", file
	}
	get := func(target string) (code int, looks int64) {
		t.Helper()
		before := store.stats.Load()
		rec := request(t, h, http.MethodGet, target)
		return rec.Code, store.stats.Load() - before
	}
	announce := func(targets ...string) {
		t.Helper()
		var hashes []string
		for _, target := range targets {
			hashes = append(hashes, strings.TrimSuffix(strings.TrimPrefix(target, "/"), ".narinfo"))
		}
		data, err := json.Marshal(map[string]any{"holder": "node b", "grace_ns": grace, "expires": time.Now().Add(time.Hour), "paths": hashes})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(h.root, "retention"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h.root, retention.AnnouncementName), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	withdraw := func() {
		t.Helper()
		if err := os.Remove(filepath.Join(h.root, retention.AnnouncementName)); err != nil {
			t.Fatal(err)
		}
	}
	remove := func(file string) {
		t.Helper()
		if err := os.Remove(file); err != nil {
			t.Fatal(err)
		}
	}
	served := func(target string) {
		t.Helper()
		if code, _ := get(target); code != http.StatusOK {
			t.Fatalf("GET %s: %d", target, code)
		}
		if code, looks := get(target); code != http.StatusOK || looks != 0 {
			t.Fatalf("GET %s again: %d after %d looks at the storage, want 200 from memory", target, code, looks)
		}
	}

	// Seen announced while it stands: every request looks, until the
	// collection deletes it.
	seen, seenFile := publish("seen")
	served(seen)
	announce(seen)
	time.Sleep(grace / 4)
	get(seen) // takes the announcement in
	if code, looks := get(seen); code != http.StatusOK || looks == 0 {
		t.Fatalf("GET of an announced narinfo: %d after %d looks at the storage, want 200 after a look", code, looks)
	}
	remove(seenFile)
	if code, _ := get(seen); code != http.StatusNotFound {
		t.Fatalf("GET of a narinfo another node deleted: %d, want 404", code)
	}
	withdraw()
	time.Sleep(grace / 4)
	if code, _ := get(seen); code != http.StatusNotFound {
		t.Fatalf("GET of a deleted narinfo once the announcement is withdrawn: %d, want 404", code)
	}

	// Announced, deleted and withdrawn while this node served nothing.
	unseen, unseenFile := publish("unseen")
	served(unseen)
	announce(unseen)
	time.Sleep(grace * 3 / 8)
	remove(unseenFile)
	withdraw()
	time.Sleep(grace * 3 / 8)
	if code, _ := get(unseen); code != http.StatusNotFound {
		t.Fatalf("GET of a narinfo deleted while this node did not look: %d, want 404", code)
	}

	// The announcement cannot be read.
	down, _ := publish("down")
	served(down)
	store.failing.Store(true)
	time.Sleep(grace/2 + grace/8)
	if code, looks := get(down); code != http.StatusOK || looks == 0 {
		t.Fatalf("GET while the announcement cannot be read: %d after %d looks at the storage, want 200 after a look", code, looks)
	}
	store.failing.Store(false)
	get(down)
	if code, looks := get(down); code != http.StatusOK || looks != 0 {
		t.Fatalf("GET once the announcement is read again: %d after %d looks at the storage, want 200 from memory", code, looks)
	}

	// Deleted behind every node's back.
	behind, behindFile := publish("behind")
	served(behind)
	remove(behindFile)
	// Requests for another path keep the look at the announcement fresh.
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(grace / 8) {
		get(down)
	}
	if code, _ := get(behind); code != http.StatusNotFound {
		t.Fatalf("GET a gc_grace after the narinfo was deleted behind the nodes' backs: %d, want 404", code)
	}
}
