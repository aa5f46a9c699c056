package caddynix

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

// newTieredHandler is an upload handler named "tiers", so that jobs get
// credentials, trusting release branches beside the default branch, with
// its index open.
func newTieredHandler(t *testing.T) (*Handler, *CacheAccess, signature.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	public, err := nixfmt.GenerateKeyPair("unit-1", filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{
		Name: "tiers", URL: "http://cache.test", Root: filepath.Join(dir, "cache"),
		SecretKeyFiles: []string{filepath.Join(dir, "k.sec")},
		Upload:         &UploadConfig{Tokens: []string{testUploadToken}, TrustedRefs: []string{"release/*", "refs/tags/v*"}},
	}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	if _, err := h.state.Open(context.Background(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	access, err := LookupCache("tiers")
	if err != nil {
		t.Fatal(err)
	}
	return h, access, public
}

// as sends a request with token as a netrc's Basic credentials, as Nix
// does on every request to a cache it has them for.
func as(t *testing.T, h *Handler, token, method, target string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, target, bytes.NewReader(body))
	if token != "" {
		req.SetBasicAuth("job", token)
	}
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		rec.Code = statusOf(err)
	}
	return rec
}

// pushAs uploads p's NAR and narinfo with token, and returns the
// narinfo's answer.
func (p testPath) pushAs(t *testing.T, h *Handler, token string) int {
	t.Helper()
	if rec := as(t, h, token, http.MethodPut, "/upload/"+p.narURL(), p.nar); rec.Code != http.StatusCreated {
		t.Fatalf("PUT %s: %d %s", p.narURL(), rec.Code, rec.Body)
	}
	return as(t, h, token, http.MethodPut, "/upload/"+p.hash+".narinfo", []byte(p.narinfo(""))).Code
}

func TestTiersFollowTheRefs(t *testing.T) {
	_, access, _ := newTieredHandler(t)
	for name, tc := range map[string]struct {
		job     Job
		overlay string
	}{
		"default branch":          {Job{Repository: "pkgs/main", Ref: "refs/heads/main", DefaultBranch: true}, ""},
		"a trusted branch":        {Job{Repository: "pkgs/main", Ref: "refs/heads/release/1.0"}, ""},
		"a trusted tag":           {Job{Repository: "pkgs/main", Ref: "refs/tags/v1.2"}, ""},
		"below a trusted pattern": {Job{Repository: "pkgs/main", Ref: "refs/heads/release/1.0/hotfix"}, "pkgs/main@refs/heads/release/1.0/hotfix"},
		"another branch":          {Job{Repository: "pkgs/main", Ref: "refs/heads/feature"}, "pkgs/main@refs/heads/feature"},
		"a pull request":          {Job{Repository: "pkgs/main", Ref: "refs/pull/3/head", PullRequest: true}, "pkgs/main@refs/pull/3/head"},
		"a pull request on main":  {Job{Repository: "pkgs/main", Ref: "refs/heads/main", PullRequest: true}, "pkgs/main@refs/heads/main"},
	} {
		t.Run(name, func(t *testing.T) {
			cred, finish := access.IssueJobCredential(&tc.job, 0)
			defer finish(true)
			if cred.Overlay != tc.overlay {
				t.Fatalf("overlay %q, want %q", cred.Overlay, tc.overlay)
			}
			trustsOverlayKey := strings.Contains(strings.Join(cred.PublicKeys, " "), "unit-1-overlay:")
			if trustsOverlayKey != (tc.overlay != "") {
				t.Fatalf("public keys %v: the overlay key is there %v, want %v", cred.PublicKeys, trustsOverlayKey, tc.overlay != "")
			}
		})
	}
	for _, bad := range [][]string{{""}, {"release/["}, {"release/"}} {
		if _, err := newTierRule(bad); err == nil {
			t.Errorf("trusted_refs %q accepted", bad)
		}
	}
}

// TestBranchPushesStayInTheirOverlay: a branch job pushes a path that the
// default branch will build, with other content. Only that branch's
// credential is served it, signed with the overlay key; the public URL,
// the upload URL, other refs and the trusted token get 404, and the
// landing page does not count it. The default branch's honest push of the
// same path is then stored in full, counted as a divergence, and served to
// everyone, the branch included.
func TestBranchPushesStayInTheirOverlay(t *testing.T) {
	h, access, public := newTieredHandler(t)
	feature, finishFeature := access.IssueJobCredential(&Job{Repository: "pkgs/main", RunID: "1", Ref: "refs/heads/feature"}, 0)
	defer finishFeature(true)
	other, finishOther := access.IssueJobCredential(&Job{Repository: "pkgs/main", RunID: "2", Ref: "refs/heads/other"}, 0)
	defer finishOther(true)
	main, finishMain := access.IssueJobCredential(&Job{Repository: "pkgs/main", RunID: "3", Ref: "refs/heads/main", DefaultBranch: true}, 0)
	defer finishMain(true)

	planted := newTestPath(t, "hello", "what the branch planted")
	if code := planted.pushAs(t, h, feature.Token); code != http.StatusCreated {
		t.Fatalf("the branch's push: %d", code)
	}
	id := (overlay.Key{Repository: "pkgs/main", Ref: "refs/heads/feature"}).ID()
	if _, err := os.Stat(filepath.Join(h.root, "overlays", id, planted.hash+".narinfo")); err != nil {
		t.Fatalf("the branch's push is not in its overlay: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.root, planted.hash+".narinfo")); err == nil {
		t.Fatal("the branch's push is in the cache proper")
	}

	narinfo := "/" + planted.hash + ".narinfo"
	for who, token := range map[string]string{"anonymous": "", "another ref": other.Token, "the default branch": main.Token, "the trusted token": testUploadToken, "a wrong token": "not-a-credential-of-this-cache"} {
		for _, target := range []string{narinfo, "/upload" + narinfo, "/" + planted.narURL()} {
			if rec := as(t, h, token, http.MethodGet, target, nil); rec.Code != http.StatusNotFound {
				t.Errorf("%s GET %s: %d, want 404", who, target, rec.Code)
			}
		}
	}
	if rec := as(t, h, "", http.MethodGet, "/", nil); !strings.Contains(rec.Body.String(), "paths: 0\n") {
		t.Errorf("the landing page counts the overlay:\n%s", rec.Body)
	}

	overlayPublic, err := signature.ParsePublicKey(feature.PublicKeys[len(feature.PublicKeys)-1])
	if err != nil {
		t.Fatal(err)
	}
	rec := as(t, h, feature.Token, http.MethodGet, narinfo, nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("the branch's own credential GET %s: %d", narinfo, rec.Code)
	}
	served, err := nixfmt.ParseNarInfo(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	fingerprint := nixfmt.Fingerprint(served)
	if !signature.VerifyFirst(fingerprint, served.Signatures, []signature.PublicKey{overlayPublic}) {
		t.Errorf("the overlay's narinfo is not signed with the overlay key:\n%s", rec.Body)
	}
	if signature.VerifyFirst(fingerprint, served.Signatures, []signature.PublicKey{public}) {
		t.Errorf("the overlay's narinfo is signed with the cache's own key:\n%s", rec.Body)
	}
	if rec := as(t, h, feature.Token, http.MethodGet, "/"+planted.narURL(), nil); rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), planted.nar) {
		t.Errorf("the branch's own credential GET its NAR: %d", rec.Code)
	}

	// Another ref pushing the same path fills its own overlay and leaves
	// the branch's alone.
	second := planted
	second.nar = newTestPath(t, "hello", "what another branch built").nar
	if code := second.pushAs(t, h, other.Token); code != http.StatusCreated {
		t.Fatalf("another ref's push of the same path: %d", code)
	}
	if rec := as(t, h, feature.Token, http.MethodGet, "/"+planted.narURL(), nil); rec.Code != http.StatusOK {
		t.Errorf("after another ref's push, the branch's NAR: %d", rec.Code)
	}

	before := testutil.ToFloat64(metrics.TierDivergence)
	honest := planted
	honest.nar = newTestPath(t, "hello", "what main built").nar
	if code := honest.pushAs(t, h, main.Token); code != http.StatusCreated {
		t.Fatalf("the default branch's push of the path an overlay holds: %d, want 201", code)
	}
	if got := testutil.ToFloat64(metrics.TierDivergence) - before; got != 2 {
		t.Errorf("divergences counted %v, want 2 (two overlays hold other NARs)", got)
	}
	for who, token := range map[string]string{"anonymous": "", "the branch": feature.Token} {
		rec := as(t, h, token, http.MethodGet, narinfo, nil)
		info, err := nixfmt.ParseNarInfo(rec.Body.Bytes())
		if rec.Code != http.StatusOK || err != nil {
			t.Fatalf("%s GET %s after main's push: %d %v", who, narinfo, rec.Code, err)
		}
		if info.URL != honest.narURL() || !signature.VerifyFirst(nixfmt.Fingerprint(info), info.Signatures, []signature.PublicKey{public}) {
			t.Errorf("%s is served %s, want main's NAR %s signed by the cache", who, info.URL, honest.narURL())
		}
	}

	// path-info shows the trusted push with its pusher, and each overlay
	// that holds the path.
	pathInfo, err := h.collector(h.state.Index()).PathInfo(context.Background(), "/nix/store/"+planted.hash+"-hello")
	if err != nil {
		t.Fatal(err)
	}
	if pathInfo.Pusher == nil || pathInfo.Pusher.Job == nil || pathInfo.Pusher.Job.RunID != "3" || pathInfo.NarURL != honest.narURL() {
		t.Errorf("path-info of the trusted push: %+v", pathInfo.Path)
	}
	overlays := map[string]string{}
	for _, c := range pathInfo.Overlays {
		overlays[c.Overlay] = c.NarURL
	}
	if len(overlays) != 2 || overlays["pkgs/main@refs/heads/feature"] != planted.narURL() || overlays["pkgs/main@refs/heads/other"] != second.narURL() {
		t.Errorf("path-info's overlays: %+v", pathInfo.Overlays)
	}
}

// TestRefCredentialsCannotReachOtherTiers tries every URL shape a ref
// credential might use to write into the cache proper or another ref's
// overlay: each is refused with a 4xx, or lands in its own overlay, and
// nothing outside its overlay changes.
func TestRefCredentialsCannotReachOtherTiers(t *testing.T) {
	h, access, _ := newTieredHandler(t)
	feature, finish := access.IssueJobCredential(&Job{Repository: "pkgs/main", Ref: "refs/heads/feature"}, 0)
	defer finish(true)
	otherID := (overlay.Key{Repository: "pkgs/main", Ref: "refs/heads/other"}).ID()
	p := newTestPath(t, "x", "content")
	if rec := as(t, h, feature.Token, http.MethodPut, "/"+p.narURL(), p.nar); rec.Code != http.StatusCreated {
		t.Fatalf("PUT NAR: %d", rec.Code)
	}
	for _, target := range []string{
		"/overlays/" + otherID + "/" + p.hash + ".narinfo",
		"/overlays/../" + p.hash + ".narinfo",
		"/upload/../" + p.hash + ".narinfo",
		"/%2e%2e/" + p.hash + ".narinfo",
		"/upload/..%2f" + p.hash + ".narinfo",
		"/nar/..%2f" + p.hash + ".narinfo",
		"/log/..%2f" + p.hash + ".narinfo",
		"/realisations/..%2f" + p.hash + ".narinfo",
		"/" + p.hash + ".narinfo/..",
	} {
		rec := as(t, h, feature.Token, http.MethodPut, target, []byte(p.narinfo("")))
		if rec.Code < 400 || rec.Code >= 500 {
			t.Errorf("PUT %s: %d, want a 4xx", target, rec.Code)
		}
	}
	for _, target := range []string{"/log/" + p.hash + "-x.drv", "/" + p.hash + ".ls", "/realisations/sha256:" + strings.Repeat("ab", 32) + "!out.doi"} {
		body := []byte("{}")
		if strings.HasPrefix(target, "/log/") {
			body = []byte("a build log")
		}
		if rec := as(t, h, feature.Token, http.MethodPut, target, body); rec.Code != http.StatusCreated {
			t.Errorf("PUT %s: %d %s", target, rec.Code, rec.Body)
		}
	}
	// Nothing but the overlay's own directory and record changed.
	var outside []string
	err := filepath.Walk(h.root, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(h.root, path)
		id := (overlay.Key{Repository: "pkgs/main", Ref: "refs/heads/feature"}).ID()
		if !strings.HasPrefix(rel, "overlays/"+id+"/") && rel != "overlays/"+id+".json" {
			outside = append(outside, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(outside) > 0 {
		t.Errorf("a ref credential wrote outside its overlay: %v", outside)
	}
}

// TestOverlaysGoFirstAndExpireWhole: a kept overlay keeps the paths of the
// cache proper its paths reference; under max_size pressure the overlays
// go before any path of the cache proper, the least recently pushed
// first; and an overlay that pushed nothing for overlay_max_age is dropped
// whole.
func TestOverlaysGoFirstAndExpireWhole(t *testing.T) {
	h, access, _ := newTieredHandler(t)
	idx, err := h.state.Open(context.Background(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	c := h.collector(idx)
	ctx := context.Background()
	old, finishOld := access.IssueJobCredential(&Job{Repository: "pkgs/main", Ref: "refs/heads/old"}, 0)
	defer finishOld(true)
	recent, finishRecent := access.IssueJobCredential(&Job{Repository: "pkgs/main", Ref: "refs/heads/recent"}, 0)
	defer finishRecent(true)

	dep := newTestPath(t, "dep", "a dependency main pushed")
	if code := dep.pushAs(t, h, testUploadToken); code != http.StatusCreated {
		t.Fatalf("trusted push: %d", code)
	}
	top := newTestPath(t, "top", "a branch's path that needs dep")
	if rec := as(t, h, old.Token, http.MethodPut, "/"+top.narURL(), top.nar); rec.Code != http.StatusCreated {
		t.Fatal(rec.Code)
	}
	if rec := as(t, h, old.Token, http.MethodPut, "/"+top.hash+".narinfo", []byte(top.narinfoWithRefs(dep))); rec.Code != http.StatusCreated {
		t.Fatalf("an overlay path referencing the cache proper: %d %s", rec.Code, rec.Body)
	}
	time.Sleep(10 * time.Millisecond)
	mine := newTestPath(t, "mine", "the recent branch's path")
	if code := mine.pushAs(t, h, recent.Token); code != http.StatusCreated {
		t.Fatal(code)
	}

	// Every path of the cache proper is old enough to go, but dep is what
	// a live overlay needs.
	report, err := c.Collect(ctx, retention.Policy{MaxAge: time.Nanosecond, OverlayMaxAge: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Deleted) != 0 || len(report.Overlays) != 0 {
		t.Fatalf("deleted %v and overlays %v, want nothing: dep is needed by a live overlay", report.Deleted, report.Overlays)
	}

	// Over max_size: the least recently pushed overlay goes first, and
	// then dep may go too.
	report, err = c.Collect(ctx, retention.Policy{MaxSize: report.SizeBefore - 1, OverlayMaxAge: time.Hour}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Overlays) != 1 || report.Overlays[0] != "pkgs/main@refs/heads/old" || len(report.Deleted) != 0 {
		t.Fatalf("under pressure, dropped %v and deleted %v; want the old overlay only", report.Overlays, report.Deleted)
	}
	if rec := as(t, h, old.Token, http.MethodGet, "/"+top.hash+".narinfo", nil); rec.Code != http.StatusNotFound {
		t.Errorf("a dropped overlay's path: %d", rec.Code)
	}
	if rec := as(t, h, recent.Token, http.MethodGet, "/"+mine.hash+".narinfo", nil); rec.Code != http.StatusOK {
		t.Errorf("the recent overlay's path: %d", rec.Code)
	}

	// Pushed nothing for overlay_max_age: dropped whole.
	report, err = c.Collect(ctx, retention.Policy{OverlayMaxAge: time.Nanosecond}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Overlays) != 1 || report.Overlays[0] != "pkgs/main@refs/heads/recent" {
		t.Fatalf("expired overlays dropped: %v", report.Overlays)
	}
	if entries, err := os.ReadDir(filepath.Join(h.root, "overlays")); len(entries) != 0 || (err != nil && !os.IsNotExist(err)) {
		t.Fatalf("left in overlays/: %v %v", entries, err)
	}
	if !present(h, dep) {
		t.Error("a path of the cache proper went with the overlays")
	}
}

// TestVerifyAndDeleteCoverOverlays: verify checks overlays as it checks
// the cache proper, their references found in either; delete removes a
// path from the overlays too, with the overlay paths that need it.
func TestVerifyAndDeleteCoverOverlays(t *testing.T) {
	h, access, _ := newTieredHandler(t)
	ctx := context.Background()
	feature, finish := access.IssueJobCredential(&Job{Repository: "pkgs/main", Ref: "refs/heads/feature"}, 0)
	defer finish(true)
	dep := newTestPath(t, "dep", "main's dependency")
	if code := dep.pushAs(t, h, testUploadToken); code != http.StatusCreated {
		t.Fatal(code)
	}
	top := newTestPath(t, "top", "the branch's path on main's dependency")
	if rec := as(t, h, feature.Token, http.MethodPut, "/"+top.narURL(), top.nar); rec.Code != http.StatusCreated {
		t.Fatal(rec.Code)
	}
	if rec := as(t, h, feature.Token, http.MethodPut, "/"+top.hash+".narinfo", []byte(top.narinfoWithRefs(dep))); rec.Code != http.StatusCreated {
		t.Fatal(rec.Code)
	}
	own := newTestPath(t, "own", "the branch's own path")
	if code := own.pushAs(t, h, feature.Token); code != http.StatusCreated {
		t.Fatal(code)
	}
	report, err := verifyDir(t, h.root, verify.Options{})
	if err != nil || report.Narinfos != 3 || len(report.Problems) != 0 {
		t.Fatalf("verify of a cache with an overlay: %+v, %v", report, err)
	}
	id := (overlay.Key{Repository: "pkgs/main", Ref: "refs/heads/feature"}).ID()
	if err := os.Remove(filepath.Join(h.root, "overlays", id, own.narURL())); err != nil {
		t.Fatal(err)
	}
	report, err = verifyDir(t, h.root, verify.Options{})
	if err != nil || len(report.Problems) != 1 || !strings.HasPrefix(report.Problems[0], "overlay pkgs/main@refs/heads/feature: "+own.hash+".narinfo: NAR") {
		t.Fatalf("verify of an overlay missing a NAR: %+v, %v", report, err)
	}

	c := h.collector(h.state.Index())
	deleted, err := c.DeletePath(ctx, "/nix/store/"+dep.hash+"-dep", false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/nix/store/" + dep.hash + "-dep", "overlay pkgs/main@refs/heads/feature: /nix/store/" + top.hash + "-top"}
	if strings.Join(deleted.Deleted, "\n") != strings.Join(want, "\n") {
		t.Errorf("delete of a path an overlay path references deleted %q, want %q", deleted.Deleted, want)
	}
	if rec := as(t, h, feature.Token, http.MethodGet, "/"+top.hash+".narinfo", nil); rec.Code != http.StatusNotFound {
		t.Errorf("the overlay still serves a path whose reference was deleted: %d", rec.Code)
	}
	deleted, err = c.DeletePath(ctx, "/nix/store/"+own.hash+"-own", false)
	if err != nil || len(deleted.Deleted) != 1 {
		t.Fatalf("delete of a path only an overlay holds: %+v, %v", deleted, err)
	}
	if _, err := c.DeletePath(ctx, "/nix/store/"+own.hash+"-own", false); !errors.Is(err, retention.ErrUnknownPath) {
		t.Errorf("deleting it again: %v, want ErrUnknownPath", err)
	}
}
