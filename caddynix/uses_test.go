package caddynix

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cachetest"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// TestRetentionSeesEveryNodesUses collects a shared cache on one node
// while another node served the older of two paths: the collection keeps
// that one, folds the other node's record into one and deletes it.
func TestRetentionSeesEveryNodesUses(t *testing.T) {
	h, c := newSharedHandler(t, 10*time.Millisecond)
	older := newTestPath(t, "older", strings.Repeat("o", 1000))
	newer := newTestPath(t, "newer", strings.Repeat("n", 1000))
	for _, p := range []testPath{older, newer} {
		if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
			t.Fatalf("upload %s: %d", p.name, code)
		}
	}
	ageIndex(t, c, time.Now().Add(-48*time.Hour))
	rec, _, _ := c.Index().Get(older.hash)
	if err := c.Index().RecordPush(rec, rec.Pusher, time.Now().Add(-72*time.Hour)); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Another node served the older path an hour ago.
	if err := retention.PublishUses(ctx, h.store, map[string]time.Time{older.hash: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	info, err := c.PathInfo(ctx, older.hash)
	if err != nil {
		t.Fatal(err)
	}
	if info.LastServed == nil || time.Since(*info.LastServed) > 2*time.Hour {
		t.Fatalf("path-info shows last served %v, not the other node's use", info.LastServed)
	}

	paths, _ := c.Index().Paths()
	report, err := c.Collect(ctx, retention.Policy{MaxSize: cachetest.Size(paths) - 1, MinAge: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Deleted) != 1 || !strings.Contains(report.Deleted[0], newer.hash) {
		t.Fatalf("deleted %v, want only %s, which no node served", report.Deleted, newer.name)
	}
	if records, err := h.store.List(ctx, retention.UsesDir); err != nil || len(records) != 0 {
		t.Fatalf("records left after folding: %v %v", records, err)
	}
	folded, err := storage.ReadAll(ctx, h.store, retention.UsesName, 1<<20)
	if err != nil || !strings.Contains(string(folded), older.hash) {
		t.Fatalf("the folded record %s lacks %s: %v", folded, older.name, err)
	}

	// A node that lost its index starts again from the folded record.
	fresh := loseIndex(t, h)
	info, err = fresh.PathInfo(ctx, older.hash)
	if err != nil {
		t.Fatal(err)
	}
	if info.LastServed == nil || time.Since(*info.LastServed) > 2*time.Hour {
		t.Fatalf("a rebuilt index lacks the use times of the folded record: last served %v", info.LastServed)
	}
}
