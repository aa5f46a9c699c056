package caddynix

import (
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// newTestHandler provisions a handler on a temporary cache root with one
// signing key.
func newTestHandler(t *testing.T) (*Handler, signature.PublicKey) {
	t.Helper()
	return newTestHandlerWith(t, nil)
}

// newTestHandlerWith is newTestHandler with an upload configuration.
func newTestHandlerWith(t *testing.T, upload *UploadConfig) (*Handler, signature.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "cache")
	public, err := nixfmt.GenerateKeyPair("unit-1", filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Root: root, SecretKeyFiles: []string{filepath.Join(dir, "k.sec")}, Upload: upload}
	ctx := testContext(t)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h, public
}

// testContext is the context of a configuration being loaded, in which a
// handler can load the nix_cache app.
func testContext(t *testing.T) caddy.Context {
	t.Helper()
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return ctx
}

// TestMain keeps the indexes of the tests' caches out of the user's data
// directory.
func TestMain(m *testing.M) {
	data, err := os.MkdirTemp("", "caddynix-test-data-")
	if err != nil {
		panic(err)
	}
	_ = os.Setenv("XDG_DATA_HOME", data)
	code := m.Run()
	_ = os.RemoveAll(data)
	os.Exit(code)
}

// rewire makes again what provisioning made of the handler's storage,
// state and upload limits, after a test changed them.
func rewire(t *testing.T, h *Handler) {
	t.Helper()
	h.receiver = h.newReceiver()
	if err := h.cache.Close(); err != nil {
		t.Fatal(err)
	}
	h.cache = h.newCache()
}

func request(t *testing.T, h *Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, target, nil)
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		rec.Code = statusOf(err)
	}
	return rec
}

func TestHandlerServesSignedNarinfo(t *testing.T) {
	h, public := newTestHandler(t)
	p := newTestPath(t, "c", "content")
	if err := os.WriteFile(filepath.Join(h.root, p.hash+".narinfo"), []byte(p.narinfo("X-Unknown-Key: tolerated\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := request(t, h, http.MethodGet, "/"+p.hash+".narinfo")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "text/x-nix-narinfo" {
		t.Fatalf("GET narinfo: %d %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	info, err := nixfmt.ParseNarInfo(rec.Body.Bytes())
	if err != nil {
		t.Fatalf("served narinfo does not parse: %v\n%s", err, rec.Body)
	}
	if len(info.Signatures) != 1 || !public.Verify(nixfmt.Fingerprint(info), info.Signatures[0]) {
		t.Fatalf("served narinfo is not signed by the handler's key:\n%s", rec.Body)
	}
	if strings.Contains(rec.Body.String(), "X-Unknown-Key") {
		t.Fatalf("unknown key passed through:\n%s", rec.Body)
	}
}

// TestPlainAndConditionalAnswersAgree: the answer to a plain GET or HEAD
// of a narinfo or a NAR, written directly, is what http.ServeContent gives
// a request with a precondition that holds.
func TestPlainAndConditionalAnswersAgree(t *testing.T) {
	h, _ := newTestHandler(t)
	p := newTestPath(t, "c", "content")
	if err := os.WriteFile(filepath.Join(h.root, p.hash+".narinfo"), []byte(p.narinfo("")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(h.root, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.root, p.narURL()), p.nar, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/" + p.hash + ".narinfo", "/" + p.narURL()} {
		plain := request(t, h, http.MethodGet, target)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")
		if err := h.ServeHTTP(rec, req, nil); err != nil {
			t.Fatal(err)
		}
		if plain.Code != http.StatusOK || rec.Code != http.StatusOK || plain.Body.String() != rec.Body.String() {
			t.Fatalf("%s: plain %d, conditional %d; bodies equal: %v", target, plain.Code, rec.Code, plain.Body.String() == rec.Body.String())
		}
		if target != "/"+p.hash+".narinfo" && plain.Body.String() != string(p.nar) {
			t.Fatalf("%s: %d bytes, not the NAR", target, plain.Body.Len())
		}
		for _, name := range []string{"Content-Type", "Content-Length", "Last-Modified", "Accept-Ranges"} {
			if plain.Header().Get(name) != rec.Header().Get(name) || plain.Header().Get(name) == "" {
				t.Errorf("%s: %s: plain %q, ServeContent %q", target, name, plain.Header().Get(name), rec.Header().Get(name))
			}
		}
		head := request(t, h, http.MethodHead, target)
		if head.Code != http.StatusOK || head.Body.Len() != 0 || head.Header().Get("Content-Length") != plain.Header().Get("Content-Length") {
			t.Fatalf("HEAD %s: %d, %d body bytes, Content-Length %q", target, head.Code, head.Body.Len(), head.Header().Get("Content-Length"))
		}
		req = httptest.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("If-Modified-Since", plain.Header().Get("Last-Modified"))
		rec = httptest.NewRecorder()
		if err := h.ServeHTTP(rec, req, nil); err != nil || rec.Code != http.StatusNotModified {
			t.Fatalf("%s If-Modified-Since the Last-Modified: %d %v, want 304", target, rec.Code, err)
		}
	}
}

func TestHandlerAnswersBadNarinfoAsMissing(t *testing.T) {
	h, _ := newTestHandler(t)
	// A narinfo stored under another path's hash, and a corrupt one.
	if err := os.WriteFile(filepath.Join(h.root, "2mq0d0irxq2fb3zqafd5gyphzy6zxjyw.narinfo"), []byte(newTestPath(t, "c", "content").narinfo("")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.root, "s1w4pv4wk26rnhszw001nryksx0g7fgy.narinfo"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/2mq0d0irxq2fb3zqafd5gyphzy6zxjyw.narinfo", "/s1w4pv4wk26rnhszw001nryksx0g7fgy.narinfo", "/00000000000000000000000000000000.narinfo"} {
		if rec := request(t, h, http.MethodGet, target); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", target, rec.Code)
		}
	}
}

func TestHandlerCacheInfoAndMethods(t *testing.T) {
	h, _ := newTestHandler(t)
	rec := request(t, h, http.MethodGet, "/nix-cache-info")
	if rec.Body.String() != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n" {
		t.Fatalf("nix-cache-info: %q", rec.Body)
	}
	if rec := request(t, h, http.MethodDelete, "/nix-cache-info"); rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE: %d, want 405", rec.Code)
	}
}

func TestProvisionRefusesStoreDirMismatch(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "nix-cache-info"), []byte("StoreDir: /gnu/store\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := &Handler{Root: root}
	ctx := testContext(t)
	err := h.Provision(ctx)
	defer func() { _ = h.Cleanup() }()
	if err == nil || !strings.Contains(err.Error(), "store_dir") {
		t.Fatalf("Provision with a cache of another store dir: %v", err)
	}
}

func TestProvisionRefusesDuplicateKeyNames(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a", "b"} {
		secret, _, _ := signature.GenerateKeypair("same-1", rand.Reader)
		if err := os.WriteFile(filepath.Join(dir, f), []byte(secret.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h := &Handler{Root: filepath.Join(dir, "cache"), SecretKeyFiles: []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}}
	ctx := testContext(t)
	err := h.Provision(ctx)
	defer func() { _ = h.Cleanup() }()
	if err == nil || !strings.Contains(err.Error(), "same name") {
		t.Fatalf("Provision with two keys of one name: %v", err)
	}
}

// statusOf is the status Caddy would answer for a handler error.
func statusOf(err error) int {
	var herr caddyhttp.HandlerError
	if errors.As(err, &herr) {
		return herr.StatusCode
	}
	return http.StatusInternalServerError
}

func TestHandlerRefusesEmptySuffixRanges(t *testing.T) {
	h, _ := newTestHandler(t)
	narPath := filepath.Join(h.root, "nar", "1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0.nar")
	if err := os.MkdirAll(filepath.Dir(narPath), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(narPath, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	for rangeHeader, want := range map[string]struct {
		status       int
		contentRange string
		body         string
	}{
		"bytes=-0":      {http.StatusRequestedRangeNotSatisfiable, "bytes */10", ""},
		"bytes=-0,-0":   {http.StatusRequestedRangeNotSatisfiable, "bytes */10", ""},
		"bytes=-0, 2-3": {http.StatusPartialContent, "bytes 2-3/10", "23"},
		"bytes=-2":      {http.StatusPartialContent, "bytes 8-9/10", "89"},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/nar/1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0.nar", nil)
		req.Header.Set("Range", rangeHeader)
		if err := h.ServeHTTP(rec, req, nil); err != nil {
			t.Fatal(err)
		}
		if rec.Code != want.status || rec.Header().Get("Content-Range") != want.contentRange ||
			(want.body != "" && rec.Body.String() != want.body) {
			t.Errorf("Range %s: %d, Content-Range %q, body %q; want %d, %q, %q", rangeHeader, rec.Code,
				rec.Header().Get("Content-Range"), rec.Body, want.status, want.contentRange, want.body)
		}
	}
}

// verifyDir runs the checks of `caddy nix-cache verify` on a cache
// directory.
func verifyDir(t *testing.T, root string, opts verify.Options) (*verify.Report, error) {
	t.Helper()
	store, err := dir.Open(root)
	if err != nil {
		return nil, err
	}
	defer func() { _ = store.Close() }()
	return verify.Cache(t.Context(), store, opts)
}
