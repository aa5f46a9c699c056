package caddynix

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cachetest"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// narinfoWithRefs is the path's narinfo referencing refs.
func (p testPath) narinfoWithRefs(refs ...testPath) string {
	var names []string
	for _, ref := range refs {
		names = append(names, ref.hash+"-"+ref.name)
	}
	return strings.Replace(p.narinfo(""), "References: \n", "References: "+strings.Join(names, " ")+"\n", 1)
}

// uploadWithRefs uploads the path's NAR and its narinfo referencing refs.
func (p testPath) uploadWithRefs(t *testing.T, h *Handler, refs ...testPath) int {
	t.Helper()
	if rec := put(t, h, "/"+p.narURL(), p.nar); rec.Code != http.StatusCreated {
		t.Fatalf("PUT %s: %d %s", p.narURL(), rec.Code, rec.Body)
	}
	return put(t, h, "/"+p.hash+".narinfo", []byte(p.narinfoWithRefs(refs...))).Code
}

// newIndexedHandler is an upload handler with its index open, as it is once
// Caddy has started.
func newIndexedHandler(t *testing.T) (*Handler, *retention.Collector) {
	t.Helper()
	h, _ := newUploadHandler(t)
	idx, err := h.state.Open(context.Background(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return h, h.collector(idx)
}

func present(h *Handler, p testPath) bool {
	_, err := os.Stat(filepath.Join(h.root, p.hash+".narinfo"))
	return err == nil
}

func TestCollectKeepsClosuresWholeAndRecentPaths(t *testing.T) {
	h, c := newIndexedHandler(t)
	lib := newTestPath(t, "lib", strings.Repeat("l", 1000))
	app := newTestPath(t, "app", strings.Repeat("a", 1000))
	old := newTestPath(t, "old", strings.Repeat("o", 1000))
	pinned := newTestPath(t, "pinned", strings.Repeat("p", 1000))
	for _, step := range []struct {
		p    testPath
		refs []testPath
	}{{lib, nil}, {app, []testPath{lib}}, {old, []testPath{lib}}, {pinned, nil}} {
		if code := step.p.uploadWithRefs(t, h, step.refs...); code != http.StatusCreated {
			t.Fatalf("uploading %s: %d", step.p.name, code)
		}
	}
	if _, err := c.Pin(context.Background(), "keep", "/nix/store/"+pinned.hash+"-"+pinned.name); err != nil {
		t.Fatal(err)
	}
	// app is served now; everything else was pushed long ago.
	long := time.Now().Add(-48 * time.Hour)
	ageIndex(t, c, long)
	if rec := request(t, h, http.MethodGet, "/"+app.hash+".narinfo"); rec.Code != http.StatusOK {
		t.Fatalf("GET app narinfo: %d", rec.Code)
	}

	report, err := c.Collect(context.Background(), retention.Policy{MaxAge: 24 * time.Hour, MinAge: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !present(h, lib) || !present(h, app) || !present(h, pinned) || present(h, old) {
		t.Fatalf("after collecting: lib %v app %v pinned %v old %v; want only old gone (deleted %v)",
			present(h, lib), present(h, app), present(h, pinned), present(h, old), report.Deleted)
	}
	if _, err := os.Stat(filepath.Join(h.root, old.narURL())); !os.IsNotExist(err) {
		t.Errorf("old's NAR is still there: %v", err)
	}
	clean, err := verifyDir(t, h.root, verify.Options{NarHash: true})
	if err != nil || len(clean.Problems) > 0 {
		t.Fatalf("verify after collecting: %v %v", err, clean.Problems)
	}
	if _, ok, _ := c.Index().Get(old.hash); ok {
		t.Errorf("the index still has the deleted path")
	}
}

// ageIndex makes every indexed path look pushed at when.
func ageIndex(t *testing.T, c *retention.Collector, when time.Time) {
	t.Helper()
	paths, err := c.Index().Paths()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		p.PushedAt, p.LastPushedAt = when, when
		if err := c.Index().RecordPush(*p, p.Pusher, when); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCollectMaxSizeTakesPullRequestPushesFirst(t *testing.T) {
	h, c := newIndexedHandler(t)
	var paths []testPath
	for i := range 6 {
		p := newTestPath(t, fmt.Sprint("p", i), strings.Repeat("x", 1000+i))
		if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
			t.Fatalf("upload: %d", code)
		}
		paths = append(paths, p)
	}
	ageIndex(t, c, time.Now().Add(-48*time.Hour))
	// p5 is the newest but came only from a pull request.
	rec, _, _ := c.Index().Get(paths[5].hash)
	if err := c.Index().Delete(rec.Hash); err != nil {
		t.Fatal(err)
	}
	if err := c.Index().RecordPush(rec, &index.Pusher{Job: &index.Job{Repository: "o/r", RunID: "9", PullRequest: true}}, time.Now().Add(-47*time.Hour)); err != nil {
		t.Fatal(err)
	}
	stored, _ := c.Index().Paths()
	size := cachetest.Size(stored)
	report, err := c.Collect(context.Background(), retention.Policy{MaxSize: size - 1, MinAge: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Deleted) != 1 || !strings.Contains(report.Deleted[0], paths[5].hash) {
		t.Fatalf("deleted %v, want only the pull-request push %s", report.Deleted, paths[5].hash)
	}
	if report.SizeAfter > size-1 {
		t.Errorf("size after %d, over max_size %d", report.SizeAfter, size-1)
	}
}

// TestCollectRacesUploads collects in a loop while uploads reference what
// it deletes: every upload is either whole or refused, never a hole.
func TestCollectRacesUploads(t *testing.T) {
	h, c := newIndexedHandler(t)
	var bases []testPath
	for i := range 40 {
		p := newTestPath(t, fmt.Sprint("base", i), fmt.Sprint("base content ", i))
		if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
			t.Fatalf("upload: %d", code)
		}
		bases = append(bases, p)
	}
	ageIndex(t, c, time.Now().Add(-48*time.Hour))

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, err := c.Collect(ctx, retention.Policy{MaxAge: time.Hour, MinAge: time.Second}, false); err != nil && ctx.Err() == nil {
				t.Error(err)
			}
		}
	})
	var accepted []testPath
	var mu sync.Mutex
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(bases); i += 4 {
				top := newTestPath(t, fmt.Sprint("top", i), fmt.Sprint("top content ", i))
				code := top.uploadWithRefs(t, h, bases[i])
				switch code {
				case http.StatusCreated:
					mu.Lock()
					accepted = append(accepted, top)
					mu.Unlock()
				case http.StatusBadRequest:
				default:
					t.Errorf("upload of a top path: %d", code)
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	cancel()
	wg.Wait()
	report, err := verifyDir(t, h.root, verify.Options{NarHash: true})
	if err != nil || len(report.Problems) > 0 {
		t.Fatalf("verify after racing: %v %v", err, report.Problems)
	}
	for _, top := range accepted {
		if !present(h, top) {
			t.Errorf("accepted upload %s is gone", top.name)
		}
	}
	t.Logf("%d of %d top paths accepted", len(accepted), len(bases))
}

func TestReindexFindsWhatNixCopyWrote(t *testing.T) {
	h, c := newIndexedHandler(t)
	a := newTestPath(t, "a", "aaa")
	b := newTestPath(t, "b", "bbb")
	if err := os.MkdirAll(filepath.Join(h.root, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []testPath{a, b} {
		if err := os.WriteFile(filepath.Join(h.root, p.narURL()), p.nar, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(h.root, a.hash+".narinfo"), []byte(a.narinfo("")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.root, b.hash+".narinfo"), []byte(b.narinfoWithRefs(a)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.root, "0000000000000000000000000000000z.narinfo"), []byte("not a narinfo"), 0o644); err != nil {
		t.Fatal(err)
	}
	stats, err := c.Reindex(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Narinfos != 3 || stats.Added != 2 || len(stats.Invalid) != 1 {
		t.Fatalf("reindex: %+v, want 3 narinfos, 2 indexed, 1 invalid", stats)
	}
	rec, ok, err := c.Index().Get(b.hash)
	if err != nil || !ok || !slices.Equal(rec.References, []string{a.hash}) || rec.NarURL != b.narURL() {
		t.Fatalf("index record of b: %+v %v %v", rec, ok, err)
	}
	if stats, err = c.Reindex(context.Background(), false); err != nil || stats.Added != 0 || stats.Removed != 0 {
		t.Fatalf("reindex of unchanged files: %+v %v, want nothing indexed or forgotten", stats, err)
	}
	// Who pushed a path is in no narinfo: reading the narinfo again keeps it.
	recA, _, err := c.Index().Get(a.hash)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Index().RecordPush(recA, &index.Pusher{Job: &index.Job{Repository: "o/r", RunID: "7"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	pushedBy := func(what string) {
		t.Helper()
		rec, ok, err := c.Index().Get(a.hash)
		if err != nil || !ok || rec.Pusher == nil || rec.Pusher.Job == nil || rec.Pusher.Job.RunID != "7" {
			t.Fatalf("after %s, a's record is %+v %v %v, want it pushed by run 7", what, rec, ok, err)
		}
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(h.root, a.hash+".narinfo"), later, later); err != nil {
		t.Fatal(err)
	}
	if stats, err = c.Reindex(context.Background(), false); err != nil || stats.Added != 1 {
		t.Fatalf("reindex after a narinfo changed: %+v %v, want it indexed again", stats, err)
	}
	pushedBy("a reindex of its changed narinfo")
	if stats, err = c.Reindex(context.Background(), true); err != nil || stats.Added != 2 {
		t.Fatalf("full reindex: %+v %v, want both indexed again", stats, err)
	}
	pushedBy("a full reindex")
	if err := os.Remove(filepath.Join(h.root, b.hash+".narinfo")); err != nil {
		t.Fatal(err)
	}
	if stats, err = c.Reindex(context.Background(), false); err != nil || stats.Removed != 1 {
		t.Fatalf("reindex after a narinfo was removed: %+v %v", stats, err)
	}
}

// loseIndex deletes the handler's index file, as an operator might, and
// opens a new one.
func loseIndex(t *testing.T, h *Handler) *retention.Collector {
	t.Helper()
	if err := h.state.Destruct(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(h.state.IndexPath()); err != nil {
		t.Fatal(err)
	}
	idx, err := h.state.Open(context.Background(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return h.collector(idx)
}

// TestLostIndexMakesTheSameDecisions: pins, served times and CI runs are
// kept in the storage too, so a collection planned on a rebuilt index
// deletes what the lost one would have.
func TestLostIndexMakesTheSameDecisions(t *testing.T) {
	h, _ := newIndexedHandler(t)
	h.state.SetStore(h.store, false)
	ctx := context.Background()
	var paths []testPath
	for i := range 8 {
		p := newTestPath(t, fmt.Sprint("p", i), strings.Repeat("x", 1000+i))
		if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
			t.Fatalf("upload: %d", code)
		}
		// Pushed i hours after a day ago.
		at := time.Now().Add(-24*time.Hour + time.Duration(i)*time.Hour)
		if err := os.Chtimes(filepath.Join(h.root, p.hash+".narinfo"), at, at); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	c := loseIndex(t, h)
	if _, err := c.Reindex(ctx, false); err != nil {
		t.Fatal(err)
	}
	storePath := func(p testPath) string { return "/nix/store/" + p.hash + "-" + p.name }
	push := func(p testPath, job *index.Job) {
		rec, _, err := c.Index().Get(p.hash)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Index().StartJob(job, 1, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := c.Index().RecordPush(rec, &index.Pusher{Job: job}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := c.Index().FinishJob(job, true, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := retention.SaveRun(ctx, h.store, c.Index(), job); err != nil {
			t.Fatal(err)
		}
	}
	// p0, the oldest, was built by the default branch's last run; p7, the
	// newest, only by a pull request; p1 was served; p2 is pinned.
	push(paths[0], &index.Job{Repository: "pkgs/main", RunID: "12", DefaultBranch: true})
	push(paths[7], &index.Job{Repository: "pkgs/main", RunID: "13", PullRequest: true})
	h.state.MarkServed(paths[1].hash)
	if _, err := c.Pin(ctx, "release", storePath(paths[2])); err != nil {
		t.Fatal(err)
	}
	stored, _ := c.Index().Paths()
	pol := retention.Policy{MaxSize: cachetest.Size(stored) / 2}
	before, err := c.Collect(ctx, pol, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{storePath(paths[7]), storePath(paths[3]), storePath(paths[4]), storePath(paths[5])}
	if !slices.Equal(before.Deleted, want) {
		t.Fatalf("planned %v,\nwant the pull-request push, then the least recently used: %v", before.Deleted, want)
	}

	c = loseIndex(t, h)
	after, err := c.Collect(ctx, pol, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(after.Deleted, before.Deleted) {
		t.Fatalf("after the index was lost, planned %v; before, %v", after.Deleted, before.Deleted)
	}
	info, err := c.PathInfo(ctx, storePath(paths[0]))
	if err != nil || info.Pusher == nil || info.Pusher.Job == nil || info.Pusher.Job.RunID != "12" {
		t.Fatalf("path-info after the index was lost does not name the run: %+v %v", info, err)
	}
}

func TestPinNames(t *testing.T) {
	h, c := newIndexedHandler(t)
	ctx := context.Background()
	p := newTestPath(t, "pinned", "content")
	if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
		t.Fatalf("upload: %d", code)
	}
	for _, bad := range []string{"", "-x", "a/b", "a b", "../x", strings.Repeat("a", 129)} {
		if _, err := c.Pin(ctx, bad, p.hash); err == nil {
			t.Errorf("pin name %q accepted", bad)
		}
	}
	if _, err := c.Pin(ctx, "release-1.2_x", p.hash); err != nil {
		t.Fatal(err)
	}
	if err := c.Unpin(ctx, "nope"); !errors.Is(err, retention.ErrNoSuchPin) {
		t.Fatalf("unpin of an unknown pin: %v", err)
	}
	pins, err := c.Pins(ctx)
	if err != nil || len(pins) != 1 || pins[0].Name != "release-1.2_x" || pins[0].Hash != p.hash {
		t.Fatalf("pins %+v %v", pins, err)
	}
	if data, err := os.ReadFile(filepath.Join(h.root, retention.PinsDir, "release-1.2_x")); err != nil || string(data) != "/nix/store/"+p.hash+"-pinned\n" {
		t.Fatalf("the pin's object holds %q (%v)", data, err)
	}
	if err := os.WriteFile(filepath.Join(h.root, retention.PinsDir, "broken"), []byte("not a store path\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Collect(ctx, retention.Policy{MaxAge: time.Second}, true); err == nil || !strings.Contains(err.Error(), "pin rm broken") {
		t.Fatalf("a collection with an unreadable pin: %v", err)
	}
}

func TestDeletePathWithReferrers(t *testing.T) {
	h, c := newIndexedHandler(t)
	ctx := context.Background()
	lib := newTestPath(t, "lib", "lib")
	app := newTestPath(t, "app", "app")
	top := newTestPath(t, "top", "top")
	for _, step := range []struct {
		p    testPath
		refs []testPath
	}{{lib, nil}, {app, []testPath{lib}}, {top, []testPath{app}}} {
		if code := step.p.uploadWithRefs(t, h, step.refs...); code != http.StatusCreated {
			t.Fatalf("uploading %s: %d", step.p.name, code)
		}
	}
	if _, err := c.DeletePath(ctx, lib.hash, false); err == nil || !strings.Contains(err.Error(), "referenced by 2 paths") {
		t.Fatalf("deleting a referenced path: %v", err)
	}
	if !present(h, lib) {
		t.Fatal("a refused delete deleted")
	}
	if _, err := c.DeletePath(ctx, "/nix/store/"+strings.Repeat("0", 32)+"-ghost", false); !errors.Is(err, retention.ErrUnknownPath) {
		t.Fatalf("deleting an unknown path: %v", err)
	}
	report, err := c.DeletePath(ctx, lib.hash, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Deleted) != 3 || !strings.Contains(report.Deleted[0], "-top") || !strings.Contains(report.Deleted[2], "-lib") {
		t.Fatalf("deleted %v, want top, app, lib in that order", report.Deleted)
	}
	for _, p := range []testPath{lib, app, top} {
		if present(h, p) {
			t.Errorf("%s is still there", p.name)
		}
	}
	if clean, err := verifyDir(t, h.root, verify.Options{}); err != nil || len(clean.Problems) > 0 || clean.Narinfos != 0 {
		t.Fatalf("verify after deleting: %v %+v", err, clean)
	}
}

func TestCorruptIndexIsRebuiltWithAWarning(t *testing.T) {
	h, _ := newUploadHandler(t)
	p := newTestPath(t, "kept", "kept")
	if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
		t.Fatalf("upload: %d", code)
	}
	if err := os.MkdirAll(filepath.Dir(h.state.IndexPath()), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.state.IndexPath(), []byte("garbage, not an index"), 0o600); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	idx, err := h.state.Open(context.Background(), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if logs.FilterMessageSnippet("rebuilding the cache index").Len() != 1 {
		t.Fatalf("no warning about the corrupt index: %v", logs.All())
	}
	c := h.collector(idx)
	if _, err := c.Reindex(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := idx.Get(p.hash); !ok {
		t.Fatal("the rebuilt index lacks the stored path")
	}
}

func TestCollectionOverMaxSizeSaysWhy(t *testing.T) {
	h, c := newIndexedHandler(t)
	core, logs := observer.New(zapcore.WarnLevel)
	h.logger = zap.New(core)
	c = h.collector(c.Index())
	p := newTestPath(t, "pinned", strings.Repeat("p", 5000))
	if code := p.uploadWithRefs(t, h); code != http.StatusCreated {
		t.Fatalf("upload: %d", code)
	}
	ageIndex(t, c, time.Now().Add(-48*time.Hour))
	if _, err := c.Pin(context.Background(), "keep", p.hash); err != nil {
		t.Fatal(err)
	}
	report, err := c.Collect(context.Background(), retention.Policy{MaxSize: 100}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Deleted) != 0 || report.Protected < 5000 {
		t.Fatalf("report %+v: the pinned path must stay and count as protected", report)
	}
	if logs.FilterMessageSnippet("stays over max_size").Len() != 1 {
		t.Fatalf("no warning that the cache stays over max_size: %v", logs.All())
	}
	if got := testutil.ToFloat64(metrics.Protected.WithLabelValues(h.cacheLabel())); got < 5000 {
		t.Fatalf("caddy_nix_cache_protected_bytes is %v", got)
	}
}
