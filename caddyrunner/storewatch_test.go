package caddyrunner

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/cargoxx-pkgs/runner/internal/nixstore/nixstoretest"
	"go.uber.org/zap"
)

// markBuilt records the store's paths at indexes as Nix records what it
// built itself: ultimate, with a deriver, registered at registered.
func markBuilt(t *testing.T, store *nixstoretest.Store, registered time.Time, indexes ...int) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+store.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	for _, i := range indexes {
		_, err := db.Exec(`update ValidPaths set ultimate = 1, deriver = ?, registrationTime = ? where path = ?`,
			"/nix/store/"+nixstoretest.RandomHash()+"-x.drv", registered.Unix(), store.Paths[i])
		if err != nil {
			t.Fatal(err)
		}
	}
}

// testWatcher is a watcher of store, rooted at the store's root, that
// pushes to cache and takes what was registered after since as the job's.
func testWatcher(t *testing.T, store *nixstoretest.Store, cache *fakeCache, since time.Time) *storeWatcher {
	t.Helper()
	pusher := testPusher(t, store, cache)
	pusher.db = nil
	return &storeWatcher{
		rootDir: store.Root, root: pusher.root, since: since, pusher: *pusher,
		snapshotDir: filepath.Join(t.TempDir(), "nix-db"), logger: zap.NewNop(),
	}
}

// The last scan pushes what the job built, with the closure the cache
// lacks; what the image brought and what was only substituted is not
// the job's to push.
func TestStoreWatcherPushesWhatTheJobBuilt(t *testing.T) {
	store := nixstoretest.New(t,
		nixstoretest.Path{Name: "image-base"},
		nixstoretest.Path{Name: "substituted", References: []int{0}},
		nixstoretest.Path{Name: "built-lib", References: []int{1}},
		nixstoretest.Path{Name: "built-app", References: []int{2, 0}},
	)
	started := time.Now().Add(-time.Minute)
	markBuilt(t, store, started.Add(-time.Hour), 0)
	markBuilt(t, store, started.Add(time.Second), 2, 3)
	cache := newFakeCache(t)
	w := testWatcher(t, store, cache, started)

	finishing := make(chan struct{})
	close(finishing)
	report := w.run(context.Background(), finishing)
	if report.Failure != "" || !report.Finished {
		t.Fatalf("report %+v, want a finished push", report)
	}
	if !slices.Equal(report.Built, store.Paths[2:]) {
		t.Fatalf("built %v, want %v", report.Built, store.Paths[2:])
	}
	for i, path := range store.Paths {
		// The image's base is pushed too: the cache holds closures.
		if !cache.narinfos[hashPart(path)] {
			t.Fatalf("path %d, %s, is not in the cache", i, path)
		}
	}
	if _, err := os.Stat(w.snapshotDir); !os.IsNotExist(err) {
		t.Fatalf("the database copy is left behind: %v", err)
	}
}

// A removed .lock file, which Nix removes once it has registered a path,
// has the watcher push while the job goes on.
func TestStoreWatcherPushesWhenALockGoes(t *testing.T) {
	store := nixstoretest.New(t, nixstoretest.Path{Name: "built"})
	started := time.Now().Add(-time.Minute)
	cache := newFakeCache(t)
	w := testWatcher(t, store, cache, started)
	finishing := make(chan struct{})
	done := make(chan agentReport)
	go func() { done <- w.run(context.Background(), finishing) }()

	lock := store.FSPath(store.Paths[0]) + ".lock"
	hash := hashPart(store.Paths[0])
	markBuilt(t, store, started.Add(time.Second), 0)
	// The watch may not be set up yet: a lock made and removed again
	// until the cache has the path.
	deadline := time.Now().Add(30 * time.Second)
	for {
		cache.mu.Lock()
		pushed := cache.narinfos[hash]
		cache.mu.Unlock()
		if pushed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the path was not pushed while the job ran")
		}
		if err := os.WriteFile(lock, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(lock); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(finishing)
	report := <-done
	if !slices.Equal(report.Built, store.Paths) || report.Failure != "" {
		t.Fatalf("report %+v, want the built path pushed once", report)
	}
}

// A cache that refuses is reported with what could not be pushed.
func TestStoreWatcherReportsARefusal(t *testing.T) {
	store := nixstoretest.New(t, nixstoretest.Path{Name: "a"}, nixstoretest.Path{Name: "b", References: []int{0}})
	started := time.Now().Add(-time.Minute)
	markBuilt(t, store, started.Add(time.Second), 0, 1)
	cache := newFakeCache(t)
	cache.refuse = true
	finishing := make(chan struct{})
	close(finishing)
	report := testWatcher(t, store, cache, started).run(context.Background(), finishing)
	if len(report.Built) != 2 || !strings.Contains(report.Failure, "409") {
		t.Fatalf("report %+v, want both paths built and the refusal", report)
	}
}

// The agent needs no dynamic loader: job images may have none.
func TestCheckStatic(t *testing.T) {
	for _, c := range []struct {
		path   string
		static bool
	}{{"/bin/sh", false}, {"/bin/busybox", true}} {
		f, err := os.Open(c.path)
		if err != nil {
			harness.Missing(t, c.path+" (from busybox-static and dash)", err)
		}
		err = checkStatic(f)
		_ = f.Close()
		if (err == nil) != c.static || (err != nil && !strings.Contains(err.Error(), "CGO_ENABLED=0")) {
			t.Fatalf("checkStatic(%s) = %v, want static %v", c.path, err, c.static)
		}
	}
}
