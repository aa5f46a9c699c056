package caddynix

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
)

// sharedDir plays storage that several nodes share: a directory whose one
// collection lease is always free.
type sharedDir struct{ storage.Store }

func (sharedDir) TryLease(context.Context, string, string, time.Duration) (bool, string, error) {
	return true, "", nil
}

func (sharedDir) ReleaseLease(context.Context, string, string) error { return nil }

// newSharedHandler is an upload handler with its index open whose storage
// counts as shared, with a short grace.
func newSharedHandler(t *testing.T, grace time.Duration) (*Handler, *retention.Collector) {
	t.Helper()
	h, c := newIndexedHandler(t)
	h.store = sharedDir{h.store}
	h.gcGrace = grace
	rewire(t, h)
	return h, h.collector(c.Index())
}

// TestCollectionOnSharedStorageKeepsWhatAnotherNodeCommits announces a
// collection, refuses uploads that need what it announced, and keeps what
// a node that had not seen the announcement yet committed meanwhile.
func TestCollectionOnSharedStorageKeepsWhatAnotherNodeCommits(t *testing.T) {
	h, c := newSharedHandler(t, 2*time.Second)
	kept := newTestPath(t, "kept", "needed by a path another node commits")
	gone := newTestPath(t, "gone", "needed by nothing")
	refused := newTestPath(t, "refused", "needs a doomed path")
	late := newTestPath(t, "late", "committed on another node")
	for _, p := range []testPath{kept, gone} {
		if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
			t.Fatalf("upload %s: %d", p.name, code)
		}
	}
	ageIndex(t, c, time.Now().Add(-48*time.Hour))

	type result struct {
		report *retention.Report
		err    error
	}
	done := make(chan result, 1)
	go func() {
		report, err := c.Collect(context.Background(), retention.Policy{MaxAge: time.Hour, MinAge: time.Hour}, false)
		done <- result{report, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := h.store.Stat(context.Background(), retention.AnnouncementName); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the collection announced nothing")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// An upload that needs an announced path is refused, with a reason,
	// once the node has looked again.
	time.Sleep(h.gcGrace / 4)
	if rec := put(t, h, "/"+refused.narURL(), refused.nar); rec.Code != http.StatusCreated {
		t.Fatalf("PUT NAR: %d", rec.Code)
	}
	rec := put(t, h, "/"+refused.hash+".narinfo", []byte(refused.narinfoWithRefs(gone)))
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "about to be deleted by a collection") || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("an upload needing an announced path got %d %q (Retry-After %q)", rec.Code, rec.Body, rec.Header().Get("Retry-After"))
	}

	// Another node, whose last look predates the announcement, commits a
	// path that needs another announced path.
	ctx := context.Background()
	if err := storage.WriteAll(ctx, h.store, late.narURL(), late.nar); err != nil {
		t.Fatal(err)
	}
	if err := storage.WriteAll(ctx, h.store, late.hash+".narinfo", []byte(late.narinfoWithRefs(kept))); err != nil {
		t.Fatal(err)
	}

	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !present(h, kept) || !present(h, late) {
		t.Fatalf("the collection deleted what a path committed during the grace needs: kept %v, late %v (report %+v)", present(h, kept), present(h, late), r.report)
	}
	if present(h, gone) {
		t.Fatalf("the collection kept %s, which nothing needs", gone.name)
	}
	if r.report.KeptByUploads == 0 {
		t.Errorf("the report counts no path kept for uploads: %+v", r.report)
	}
	if _, err := h.store.Stat(ctx, retention.AnnouncementName); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the announcement outlived its collection: %v", err)
	}
	report, err := verifyDir(t, h.root, verify.Options{NarHash: true})
	if err != nil || len(report.Problems) > 0 {
		t.Fatalf("verify: %v %v", err, report.Problems)
	}

	// Once the collection is done, the refused path can be uploaded with
	// what it needs.
	if code := gone.uploadWithRefs(t, h); code != http.StatusCreated {
		t.Fatalf("upload of %s again: %d", gone.name, code)
	}
	time.Sleep(h.gcGrace / 4)
	if code := refused.uploadWithRefs(t, h, gone); code != http.StatusCreated {
		t.Fatalf("upload after the collection: %d", code)
	}
}

// TestAnAnnouncementOnlyLastsAsLongAsItsCollection ignores the announcement
// of a collection that died, and gives an upload no more than the part of
// the grace it may still use.
func TestAnAnnouncementOnlyLastsAsLongAsItsCollection(t *testing.T) {
	h, _ := newSharedHandler(t, 400*time.Millisecond)
	ctx := context.Background()
	stale := `{"holder":"a dead node","grace_ns":60000000000,"expires":"2020-01-01T00:00:00Z","paths":["` + strings.Repeat("0", 32) + `"]}`
	if err := storage.WriteAll(ctx, h.store, retention.AnnouncementName, []byte(stale)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	commitCtx, release, err := h.state.AdmitCommit(ctx, h.store, h.gcGrace, []string{strings.Repeat("0", 32)})
	if err != nil {
		t.Fatalf("an expired announcement refused an upload: %v", err)
	}
	release()
	if d, ok := commitCtx.Deadline(); !ok || d.After(start.Add(h.gcGrace/2+50*time.Millisecond)) {
		t.Fatalf("the commit may run until %v, beyond half the grace after the look", d)
	}

	if err := storage.WriteAll(ctx, h.store, retention.AnnouncementName, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(h.gcGrace / 4)
	if _, _, err := h.state.AdmitCommit(ctx, h.store, h.gcGrace, nil); err == nil || !strings.Contains(err.Error(), retention.AnnouncementName) {
		t.Fatalf("an unreadable announcement was not reported: %v", err)
	}
}
