package caddynix

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// upstreamServer serves h over HTTP, as another cache would.
func upstreamServer(t *testing.T, h *Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			w.WriteHeader(statusOf(err))
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// newDownstream provisions a handler whose upstream is at url, trusted
// under key.
func newDownstream(t *testing.T, url string, key signature.PublicKey, configure func(*UpstreamConfig)) (*Handler, signature.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	public, err := nixfmt.GenerateKeyPair("down-1", filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &UpstreamConfig{URL: url, TrustedPublicKeys: []string{key.String()}}
	if configure != nil {
		configure(cfg)
	}
	h := &Handler{Root: filepath.Join(dir, "cache"), SecretKeyFiles: []string{filepath.Join(dir, "k.sec")}, Upstreams: []*UpstreamConfig{cfg}}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h, public
}

// signedBy reports which of keys sign a served narinfo validly.
func signedBy(t *testing.T, body []byte, keys ...signature.PublicKey) []string {
	t.Helper()
	info, err := nixfmt.ParseNarInfo(body)
	if err != nil {
		t.Fatalf("narinfo does not parse: %v\n%s", err, body)
	}
	var names []string
	for _, key := range keys {
		for _, sig := range info.Signatures {
			if sig.Name == key.Name && key.Verify(nixfmt.Fingerprint(info), sig) {
				names = append(names, key.Name)
			}
		}
	}
	return names
}

// getThrough GETs target and recovers an aborted response.
func getThrough(h *Handler, target string) (rec *httptest.ResponseRecorder, aborted bool) {
	rec = httptest.NewRecorder()
	defer func() {
		if r := recover(); r != nil {
			if r != http.ErrAbortHandler { //nolint:errorlint // the value http.Server looks for
				panic(r)
			}
			aborted = true
		}
	}()
	if err := h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil), nil); err != nil {
		rec.Code = statusOf(err)
	}
	return rec, false
}

func TestUpstreamIsPassedThroughWithItsSignature(t *testing.T) {
	up, upKey := newUploadHandler(t)
	lib := newTestPath(t, "lib", strings.Repeat("l", 5000))
	if code := lib.upload(t, up, "").Code; code != http.StatusCreated {
		t.Fatalf("upstream upload: %d", code)
	}
	srv := upstreamServer(t, up)
	down, downKey := newDownstream(t, srv.URL, upKey, nil)

	rec := request(t, down, http.MethodGet, "/"+lib.hash+".narinfo")
	if rec.Code != http.StatusOK {
		t.Fatalf("narinfo through the upstream: %d %s", rec.Code, rec.Body)
	}
	if got := signedBy(t, rec.Body.Bytes(), upKey, downKey); len(got) != 1 || got[0] != upKey.Name {
		t.Errorf("narinfo signed by %v, want only the upstream's %s (sign is off)", got, upKey.Name)
	}
	nar, aborted := getThrough(down, "/"+lib.narURL())
	if aborted || nar.Code != http.StatusOK || !bytes.Equal(nar.Body.Bytes(), lib.nar) {
		t.Fatalf("NAR through the upstream: %d, aborted %v, %d bytes", nar.Code, aborted, nar.Body.Len())
	}
	if _, err := os.Stat(filepath.Join(down.root, lib.hash+".narinfo")); err == nil {
		t.Error("the path was kept without keep")
	}
	// Clients need the upstream's key for what the cache does not sign.
	if page := request(t, down, http.MethodGet, "/").Body.String(); !strings.Contains(page, "extra-trusted-public-keys = "+downKey.String()+" "+upKey.String()) {
		t.Errorf("the landing page's nix.conf does not trust the upstream's key:\n%s", page)
	}
	if rec := request(t, down, http.MethodGet, "/"+newTestPath(t, "x", "x").hash+".narinfo"); rec.Code != http.StatusNotFound {
		t.Errorf("a path no source has: %d", rec.Code)
	}

	// With sign, the cache vouches for the upstream's path.
	signing, signingKey := newDownstream(t, srv.URL, upKey, func(c *UpstreamConfig) { c.Sign = true })
	rec = request(t, signing, http.MethodGet, "/"+lib.hash+".narinfo")
	if got := signedBy(t, rec.Body.Bytes(), upKey, signingKey); len(got) != 2 {
		t.Errorf("with sign, narinfo signed by %v, want both keys", got)
	}
}

func TestUpstreamPathsAreKept(t *testing.T) {
	up, upKey := newUploadHandler(t)
	lib := newTestPath(t, "lib", strings.Repeat("l", 5000))
	app := newTestPath(t, "app", strings.Repeat("a", 7000))
	if code := lib.upload(t, up, "").Code; code != http.StatusCreated {
		t.Fatalf("upstream upload: %d", code)
	}
	if code := app.uploadWithRefs(t, up, lib); code != http.StatusCreated {
		t.Fatalf("upstream upload: %d", code)
	}
	srv := upstreamServer(t, up)
	down, downKey := newDownstream(t, srv.URL, upKey, func(c *UpstreamConfig) { c.Keep = true })

	// As Nix substitutes: every narinfo, then the NARs, references first.
	for _, p := range []testPath{app, lib} {
		if rec := request(t, down, http.MethodGet, "/"+p.hash+".narinfo"); rec.Code != http.StatusOK {
			t.Fatalf("narinfo of %s: %d", p.name, rec.Code)
		}
	}
	for _, p := range []testPath{lib, app} {
		if rec, aborted := getThrough(down, "/"+p.narURL()); aborted || !bytes.Equal(rec.Body.Bytes(), p.nar) {
			t.Fatalf("NAR of %s: %d, aborted %v", p.name, rec.Code, aborted)
		}
	}
	down.sources.Wait()
	srv.Close()
	for _, p := range []testPath{lib, app} {
		if !present(down, p) {
			t.Fatalf("%s was not kept", p.name)
		}
		rec := request(t, down, http.MethodGet, "/"+p.hash+".narinfo")
		if got := signedBy(t, rec.Body.Bytes(), upKey, downKey); len(got) != 2 {
			t.Errorf("kept %s is signed by %v, want the upstream's key and the cache's", p.name, got)
		}
		if rec := request(t, down, http.MethodGet, "/"+p.narURL()); !bytes.Equal(rec.Body.Bytes(), p.nar) {
			t.Errorf("kept NAR of %s: %d, %d bytes", p.name, rec.Code, rec.Body.Len())
		}
	}
	if report, err := verifyDir(t, down.root, verify.Options{NarHash: true}); err != nil || len(report.Problems) > 0 || report.Narinfos != 2 {
		t.Errorf("verify after keeping: %v %+v", err, report)
	}
}

// TestUpstreamThatLies serves narinfos and NARs an upstream has changed:
// a narinfo whose signature no longer matches, one signed by an untrusted
// key, and a NAR that is not the one its narinfo names. Each is refused
// for that request and nothing is kept.
func TestUpstreamThatLies(t *testing.T) {
	up, upKey := newUploadHandler(t)
	lib := newTestPath(t, "lib", strings.Repeat("l", 5000))
	if code := lib.upload(t, up, "").Code; code != http.StatusCreated {
		t.Fatalf("upstream upload: %d", code)
	}
	var tamper func(path string, body []byte) []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := request(t, up, http.MethodGet, r.URL.RequestURI())
		w.WriteHeader(rec.Code)
		_, _ = w.Write(tamper(r.URL.Path, rec.Body.Bytes()))
	}))
	defer srv.Close()
	down, _ := newDownstream(t, srv.URL, upKey, func(c *UpstreamConfig) { c.Keep = true })

	tamper = func(path string, body []byte) []byte {
		return bytes.Replace(body, []byte("NarSize: "), []byte("NarSize: 1"), 1)
	}
	if rec := request(t, down, http.MethodGet, "/"+lib.hash+".narinfo"); rec.Code != http.StatusNotFound {
		t.Errorf("narinfo whose signature no longer matches: %d, want 404", rec.Code)
	}

	otherKey := newOtherKey(t)
	untrusting, _ := newDownstream(t, srv.URL, otherKey, nil)
	tamper = func(path string, body []byte) []byte { return body }
	if rec := request(t, untrusting, http.MethodGet, "/"+lib.hash+".narinfo"); rec.Code != http.StatusNotFound {
		t.Errorf("narinfo signed by an untrusted key: %d, want 404", rec.Code)
	}

	tamper = func(path string, body []byte) []byte {
		if strings.HasPrefix(path, "/nar/") {
			body = bytes.Clone(body)
			body[len(body)-40] ^= 1
		}
		return body
	}
	if rec := request(t, down, http.MethodGet, "/"+lib.hash+".narinfo"); rec.Code != http.StatusOK {
		t.Fatalf("narinfo: %d", rec.Code)
	}
	rec, aborted := getThrough(down, "/"+lib.narURL())
	if !aborted || rec.Body.Len() >= len(lib.nar) {
		t.Errorf("a NAR that does not match its narinfo: aborted %v after %d of %d bytes", aborted, rec.Body.Len(), len(lib.nar))
	}
	if present(down, lib) {
		t.Error("a NAR that did not match was kept")
	}
	if _, err := os.Stat(filepath.Join(down.root, lib.narURL())); err == nil {
		t.Error("the NAR file that did not match was stored")
	}
}

// newOtherKey is a key no cache signs with, named as the upstream's.
func newOtherKey(t *testing.T) signature.PublicKey {
	t.Helper()
	dir := t.TempDir()
	public, err := nixfmt.GenerateKeyPair("unit-1", filepath.Join(dir, "o.sec"), filepath.Join(dir, "o.pub"))
	if err != nil {
		t.Fatal(err)
	}
	return public
}

// TestSlowUpstreamIsAMiss: an upstream that does not answer within the
// timeout costs a lookup no more than the timeout.
func TestSlowUpstreamIsAMiss(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	key := newOtherKey(t)
	down, _ := newDownstream(t, srv.URL, key, func(c *UpstreamConfig) { c.Timeout = caddy.Duration(200 * time.Millisecond) })
	start := time.Now()
	rec := request(t, down, http.MethodGet, "/"+newTestPath(t, "x", "x").hash+".narinfo")
	if rec.Code != http.StatusNotFound {
		t.Errorf("a slow upstream: %d, want 404", rec.Code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a lookup took %v with a 200ms timeout", took)
	}
	_, _ = io.Copy(io.Discard, rec.Body)
}

func TestUpstreamConfigErrors(t *testing.T) {
	key := newOtherKey(t)
	for name, cfg := range map[string]*UpstreamConfig{
		"no keys":    {URL: "https://cache.example.org"},
		"bad key":    {URL: "https://cache.example.org", TrustedPublicKeys: []string{"nonsense"}},
		"not http":   {URL: "file:///srv/cache", TrustedPublicKeys: []string{key.String()}},
		"with query": {URL: "https://cache.example.org/?priority=1", TrustedPublicKeys: []string{key.String()}},
	} {
		h := &Handler{Upstreams: []*UpstreamConfig{cfg}}
		if err := h.Provision(testContext(t)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "upstream") {
			t.Errorf("%s: the error does not name the upstream: %v", name, err)
		}
		_ = h.Cleanup()
	}
}

// TestUpstreamClosuresAreKeptWhole: a client that holds a path's
// references already fetches only the path; the cache fetches the
// references it lacks from the same upstream, so it keeps the closure
// whole, or, when one cannot be had, keeps none of it.
func TestUpstreamClosuresAreKeptWhole(t *testing.T) {
	up, upKey := newUploadHandler(t)
	lib := newTestPath(t, "lib", strings.Repeat("l", 5000))
	mid := newTestPath(t, "mid", strings.Repeat("m", 6000))
	app := newTestPath(t, "app", strings.Repeat("a", 7000))
	for _, upload := range []func() int{
		func() int { return lib.upload(t, up, "").Code },
		func() int { return mid.uploadWithRefs(t, up, lib) },
		func() int { return app.uploadWithRefs(t, up, mid, lib) },
	} {
		if code := upload(); code != http.StatusCreated {
			t.Fatalf("upstream upload: %d", code)
		}
	}
	srv := upstreamServer(t, up)
	down, _ := newDownstream(t, srv.URL, upKey, func(c *UpstreamConfig) { c.Keep = true })

	if rec := request(t, down, http.MethodGet, "/"+app.hash+".narinfo"); rec.Code != http.StatusOK {
		t.Fatalf("narinfo of app: %d", rec.Code)
	}
	if rec, aborted := getThrough(down, "/"+app.narURL()); aborted || !bytes.Equal(rec.Body.Bytes(), app.nar) {
		t.Fatalf("NAR of app: %d, aborted %v", rec.Code, aborted)
	}
	down.sources.Wait()
	for _, p := range []testPath{lib, mid, app} {
		if !present(down, p) {
			t.Errorf("%s was not kept", p.name)
		}
	}
	if report, err := verifyDir(t, down.root, verify.Options{NarHash: true}); err != nil || len(report.Problems) > 0 || report.Narinfos != 3 {
		t.Errorf("verify after keeping: %v %+v", err, report)
	}

	// A reference the upstream no longer has: nothing of the closure is kept.
	other, _ := newDownstream(t, srv.URL, upKey, func(c *UpstreamConfig) { c.Keep = true })
	if err := os.Remove(filepath.Join(up.root, lib.hash+".narinfo")); err != nil {
		t.Fatal(err)
	}
	if rec := request(t, other, http.MethodGet, "/"+app.hash+".narinfo"); rec.Code != http.StatusOK {
		t.Fatalf("narinfo of app: %d", rec.Code)
	}
	if rec, aborted := getThrough(other, "/"+app.narURL()); aborted || !bytes.Equal(rec.Body.Bytes(), app.nar) {
		t.Fatalf("NAR of app: %d, aborted %v", rec.Code, aborted)
	}
	other.sources.Wait()
	for _, p := range []testPath{lib, mid, app} {
		if present(other, p) {
			t.Errorf("%s was kept though its closure could not be", p.name)
		}
	}
}

// TestUpstreamNarNamesAreKeptUnderTheCachesOwn keeps paths from upstreams
// that name their NARs otherwise than `nix copy --to file://` does: by NAR
// hash with the store path's hash in a query (harmonia, a live store), by
// NAR hash alone, and with no FileHash at all (a store compressing as it
// serves). Each is kept, named by its file hash, and read back whole.
func TestUpstreamNarNamesAreKeptUnderTheCachesOwn(t *testing.T) {
	dir := t.TempDir()
	upPublic, err := nixfmt.GenerateKeyPair("up-1", filepath.Join(dir, "up.sec"), filepath.Join(dir, "up.pub"))
	if err != nil {
		t.Fatal(err)
	}
	upSecret, err := nixfmt.LoadSecretKey(filepath.Join(dir, "up.sec"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		compression string
		fileHash    bool
		url         func(narHash, hash string) string
	}{
		{"harmonia", "none", true, func(narHash, hash string) string { return "nar/" + narHash + ".nar?hash=" + hash }},
		{"nar hash names", "zstd", true, func(narHash, _ string) string { return "nar/" + narHash + ".nar.zst" }},
		{"no file hash", "zstd", false, func(narHash, hash string) string { return "nar/" + narHash + ".nar.zst?hash=" + hash }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPath(t, "lib", strings.Repeat("l", 5000))
			file := p.nar
			if tc.compression == "zstd" {
				enc, _ := zstd.NewWriter(nil)
				file = enc.EncodeAll(p.nar, nil)
			}
			info, err := nixfmt.ParseNarInfo([]byte(p.narinfo("")))
			if err != nil {
				t.Fatal(err)
			}
			narHash := info.NarHash.Format(nixhash.NixBase32, false)
			info.URL, info.Compression = tc.url(narHash, p.hash), tc.compression
			info.FileHash, info.FileSize = nil, 0
			if tc.fileHash {
				sum := sha256.Sum256(file)
				info.FileHash = nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true)
				info.FileSize = uint64(len(file))
			}
			if err := nixfmt.Sign(info, []signature.SecretKey{upSecret}); err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.RequestURI() {
				case "/" + p.hash + ".narinfo":
					_, _ = io.WriteString(w, info.String())
				case "/" + info.URL:
					_, _ = w.Write(file)
				default:
					http.NotFound(w, r)
				}
			}))
			defer srv.Close()
			down, downKey := newDownstream(t, srv.URL, upPublic, func(c *UpstreamConfig) { c.Keep = true })

			if rec := request(t, down, http.MethodGet, "/"+p.hash+".narinfo"); rec.Code != http.StatusOK {
				t.Fatalf("narinfo through the upstream: %d %s", rec.Code, rec.Body)
			}
			if rec, aborted := getThrough(down, "/"+info.URL); aborted || !bytes.Equal(rec.Body.Bytes(), file) {
				t.Fatalf("NAR through the upstream: %d, aborted %v", rec.Code, aborted)
			}
			down.sources.Wait()
			srv.Close()
			if !present(down, p) {
				t.Fatalf("the path was not kept")
			}
			rec := request(t, down, http.MethodGet, "/"+p.hash+".narinfo")
			kept, err := nixfmt.ParseNarInfo(rec.Body.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if got := signedBy(t, rec.Body.Bytes(), upPublic, downKey); len(got) != 2 {
				t.Errorf("kept narinfo signed by %v, want the upstream's key and the cache's", got)
			}
			wantURL := "nar/" + kept.FileHash.Format(nixhash.NixBase32, false) + nixfmt.NarCompressions[kept.Compression]
			if kept.URL != wantURL || (tc.fileHash && kept.Compression != tc.compression) {
				t.Errorf("kept as URL %s, Compression %s; want %s", kept.URL, kept.Compression, wantURL)
			}
			body := request(t, down, http.MethodGet, "/"+kept.URL).Body
			plain, release, err := nixfmt.Decompressor(kept.Compression, body)
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			if got, _ := io.ReadAll(plain); !bytes.Equal(got, p.nar) {
				t.Errorf("the kept NAR is not the path's NAR (%d bytes)", len(got))
			}
			if report, err := verifyDir(t, down.root, verify.Options{NarHash: true}); err != nil || len(report.Problems) > 0 || report.Narinfos != 1 {
				t.Errorf("verify after keeping: %v %+v", err, report)
			}
		})
	}
}
