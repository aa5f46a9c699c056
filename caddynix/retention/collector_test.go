package retention

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cachetest"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"go.uber.org/zap"
)

// storedPath is a path written into a cache directory as `nix copy --to
// file://` writes it: its NAR, then its narinfo.
type storedPath struct {
	hash, name string
}

func (p storedPath) storePath() string { return "/nix/store/" + p.hash + "-" + p.name }

func writePath(t *testing.T, store storage.Store, name string, size int, refs ...storedPath) storedPath {
	t.Helper()
	random := make([]byte, 20)
	_, _ = rand.Read(random)
	p := storedPath{hash: nixbase32.EncodeToString(random), name: name}
	narBytes := cachetest.NAR(t, p.hash+strings.Repeat("x", size)) // a NAR of its own
	sum := sha256.Sum256(narBytes)
	narURL := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
	var names []string
	for _, ref := range refs {
		names = append(names, ref.hash+"-"+ref.name)
	}
	narinfo := fmt.Sprintf("StorePath: %s\nURL: %s\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%[3]s\nNarSize: %[4]d\nReferences: %s\n",
		p.storePath(), narURL, nixbase32.EncodeToString(sum[:]), len(narBytes), strings.Join(names, " "))
	ctx := context.Background()
	if err := storage.WriteAll(ctx, store, narURL, narBytes); err != nil {
		t.Fatal(err)
	}
	if err := storage.WriteAll(ctx, store, p.hash+".narinfo", []byte(narinfo)); err != nil {
		t.Fatal(err)
	}
	return p
}

// newTestCollector is a collector of a new cache directory, with its
// index open.
func newTestCollector(t *testing.T) (*Collector, storage.Store) {
	t.Helper()
	root := t.TempDir()
	store, err := dir.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	state := NewState(filepath.Join(t.TempDir(), "index.db"))
	state.SetStore(store, false)
	idx, err := state.Open(context.Background(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = state.Destruct(); _ = store.Close() })
	return NewCollector(Options{Store: store, StoreDir: "/nix/store", State: state, Index: idx, Logger: zap.NewNop(), Cache: "test"}), store
}

// TestCollectorKeepsClosuresAndPins collects a cache directory written
// without any handler: over max_size, the least recently pushed closure
// goes, referrer before reference, while a shared reference, a newer
// closure and a pinned one stay; the directory is left with no narinfo
// whose reference or NAR is missing.
func TestCollectorKeepsClosuresAndPins(t *testing.T) {
	c, store := newTestCollector(t)
	ctx := context.Background()
	shared := writePath(t, store, "shared", 4000)
	oldTop := writePath(t, store, "old", 4000, shared)
	oldLib := writePath(t, store, "oldlib", 4000)
	oldApp := writePath(t, store, "oldapp", 4000, oldLib)
	pinned := writePath(t, store, "pinned", 4000)
	newTop := writePath(t, store, "new", 4000, shared)
	if _, err := c.Reindex(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Pushes long ago, in order; newTop the latest.
	for i, p := range []storedPath{shared, oldTop, oldLib, oldApp, pinned, newTop} {
		rec, ok, err := c.Index().Get(p.hash)
		if err != nil || !ok {
			t.Fatalf("%s is not indexed: %v", p.name, err)
		}
		if err := c.Index().RecordPush(rec, nil, time.Now().Add(-100*time.Hour+time.Duration(i)*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Pin(ctx, "release", pinned.storePath()); err != nil {
		t.Fatal(err)
	}
	paths, err := c.Index().Paths()
	if err != nil {
		t.Fatal(err)
	}
	size := cachetest.Size(paths)
	// Room for three paths of about 4 KB and a little: the two old
	// closures must go.
	report, err := c.Collect(ctx, Policy{MaxSize: size/2 + 1000, MinAge: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{oldTop.storePath(), oldApp.storePath(), oldLib.storePath()}
	if strings.Join(report.Deleted, " ") != strings.Join(want, " ") {
		t.Fatalf("deleted %v, want the old closures, referrers first: %v", report.Deleted, want)
	}
	for _, p := range []storedPath{shared, pinned, newTop} {
		if _, err := store.Stat(ctx, p.hash+".narinfo"); err != nil {
			t.Errorf("%s was deleted: %v", p.name, err)
		}
	}
	if report.SizeAfter > report.MaxSize || report.Protected == 0 {
		t.Errorf("report %+v: want the cache under max_size and the pin protected", report)
	}
	left, err := c.Index().Paths()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range left {
		for _, ref := range p.References {
			if _, ok := left[ref]; !ok {
				t.Errorf("%s is kept without its reference %s", p.StorePath, ref)
			}
		}
		if _, err := store.Stat(ctx, p.NarURL); err != nil {
			t.Errorf("%s is kept without its NAR: %v", p.StorePath, err)
		}
	}
}
