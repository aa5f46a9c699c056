package caddynix

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cachetest"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/ulikunitz/xz"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const testUploadToken = "unit-upload-token-0123456789"

// newUploadHandler provisions a handler that takes uploads with
// testUploadToken, signing with one key called unit-1.
func newUploadHandler(t *testing.T) (*Handler, signature.PublicKey) {
	t.Helper()
	return newTestHandlerWith(t, &UploadConfig{Tokens: []string{testUploadToken}})
}

func put(t *testing.T, h *Handler, target string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPut, target, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testUploadToken)
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		rec.Code = statusOf(err)
	}
	return rec
}

// testPath is a store path to upload: its hash part, its uncompressed NAR
// and a narinfo describing it, with extra lines appended.
type testPath struct {
	hash, name string
	nar        []byte
}

func newTestPath(t *testing.T, name, content string) testPath {
	t.Helper()
	hash := make([]byte, 20)
	_, _ = rand.Read(hash)
	return testPath{hash: nixbase32.EncodeToString(hash), name: name, nar: cachetest.NAR(t, content)}
}

func (p testPath) narURL() string {
	sum := sha256.Sum256(p.nar)
	return "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
}

func (p testPath) narinfo(extra string) string {
	sum := sha256.Sum256(p.nar)
	return fmt.Sprintf("StorePath: /nix/store/%s-%s\nURL: %s\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n%s",
		p.hash, p.name, p.narURL(), nixbase32.EncodeToString(sum[:]), len(p.nar), nixbase32.EncodeToString(sum[:]), len(p.nar), extra)
}

// upload PUTs the path's NAR, then its narinfo, and returns the narinfo's
// answer.
func (p testPath) upload(t *testing.T, h *Handler, extra string) *httptest.ResponseRecorder {
	t.Helper()
	if rec := put(t, h, "/"+p.narURL(), p.nar); rec.Code != http.StatusCreated {
		t.Fatalf("PUT %s: %d %s", p.narURL(), rec.Code, rec.Body)
	}
	return put(t, h, "/"+p.hash+".narinfo", []byte(p.narinfo(extra)))
}

func TestUploadRefusesBrokenNars(t *testing.T) {
	h, _ := newUploadHandler(t)
	whole := cachetest.NAR(t, "some file content")
	for name, body := range map[string][]byte{
		"truncated":            whole[:len(whole)-8],
		"header then garbage":  append(append([]byte{}, whole[:24]...), []byte("garbage garbage garbage garbage")...),
		"trailing data":        append(append([]byte{}, whole...), 0),
		"two NARs":             append(append([]byte{}, whole...), whole...),
		"header only":          whole[:24],
		"bad padding":          badPadding(t),
		"not a NAR at all":     []byte("definitely not a NAR, but long enough to hash"),
		"entries out of order": unsortedNar(t),
	} {
		t.Run(name, func(t *testing.T) {
			sum := sha256.Sum256(body)
			url := "/nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
			rec := put(t, h, url, body)
			if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "NAR") {
				t.Fatalf("PUT %s: %d %s, want 400 naming the NAR", name, rec.Code, rec.Body)
			}
			if _, err := os.Stat(filepath.Join(h.root, url)); err == nil {
				t.Fatalf("the broken NAR was stored")
			}
		})
	}
	if rec := put(t, h, "/"+newTestPath(t, "ok", "").narURL(), cachetest.NAR(t, "")); rec.Code != http.StatusCreated {
		t.Fatalf("an empty file's NAR: %d %s", rec.Code, rec.Body)
	}
}

// badPadding is a NAR whose file content is followed by non-zero padding.
func badPadding(t *testing.T) []byte {
	data := cachetest.NAR(t, "abc") // 3 bytes of content, 5 of padding
	i := bytes.Index(data, []byte("abc"))
	data[i+3] = 'x'
	return data
}

// unsortedNar is a directory NAR whose entries are not in order.
func unsortedNar(t *testing.T) []byte {
	var buf bytes.Buffer
	str := func(s string) {
		var n [8]byte
		n[0] = byte(len(s))
		buf.Write(n[:])
		buf.WriteString(s)
		buf.Write(make([]byte, (8-len(s)%8)%8))
	}
	for _, s := range []string{"nix-archive-1", "(", "type", "directory"} {
		str(s)
	}
	for _, name := range []string{"b", "a"} {
		for _, s := range []string{"entry", "(", "name", name, "node", "(", "type", "regular", "contents", ""} {
			str(s)
		}
		str(")")
		str(")")
	}
	str(")")
	return buf.Bytes()
}

func TestUploadNeverReplacesAPath(t *testing.T) {
	h, public := newUploadHandler(t)
	first := newTestPath(t, "pkg", "the default branch's build")
	if rec := first.upload(t, h, ""); rec.Code != http.StatusCreated {
		t.Fatalf("first upload: %d %s", rec.Code, rec.Body)
	}
	stored, err := os.ReadFile(filepath.Join(h.root, first.hash+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	// The same path and NAR again: accepted, nothing changes.
	if rec := put(t, h, "/"+first.hash+".narinfo", []byte(first.narinfo("System: x86_64-linux\n"))); rec.Code != http.StatusCreated {
		t.Fatalf("the same NAR again: %d %s", rec.Code, rec.Body)
	}
	// The same store path with another, self-consistent NAR: a conflict.
	swapped := first
	swapped.nar = cachetest.NAR(t, "a branch's replacement")
	rec := swapped.upload(t, h, "")
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), "never replaces") {
		t.Fatalf("replacing a path: %d %s, want 409", rec.Code, rec.Body)
	}
	after, _ := os.ReadFile(filepath.Join(h.root, first.hash+".narinfo"))
	if !bytes.Equal(after, stored) {
		t.Fatalf("the stored narinfo changed:\n%s\nto\n%s", stored, after)
	}
	served := request(t, h, http.MethodGet, "/"+first.hash+".narinfo")
	info, err := nixfmt.ParseNarInfo(served.Body.Bytes())
	if err != nil || info.URL != first.narURL() || !public.Verify(nixfmt.Fingerprint(info), info.Signatures[0]) {
		t.Fatalf("the cache serves another NAR for the path now: %v\n%s", err, served.Body)
	}
}

func TestUploadDropsSignaturesUnderTheCachesKeyNames(t *testing.T) {
	h, public := newUploadHandler(t)
	p := newTestPath(t, "signed", "content")
	forger, _, _ := signature.GenerateKeypair("unit-1", rand.Reader)
	client, clientPublic, _ := signature.GenerateKeypair("client-1", rand.Reader)
	info, err := nixfmt.ParseNarInfo([]byte(p.narinfo("")))
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := forger.Sign(rand.Reader, nixfmt.Fingerprint(info))
	kept, _ := client.Sign(rand.Reader, nixfmt.Fingerprint(info))
	if rec := p.upload(t, h, "Sig: "+forged.String()+"\nSig: "+kept.String()+"\n"); rec.Code != http.StatusCreated {
		t.Fatalf("upload: %d %s", rec.Code, rec.Body)
	}
	stored, _ := os.ReadFile(filepath.Join(h.root, p.hash+".narinfo"))
	if strings.Contains(string(stored), forged.String()) || !strings.Contains(string(stored), kept.String()) {
		t.Fatalf("stored narinfo should keep the client's signature and drop the one under the cache's name:\n%s", stored)
	}
	report, err := verifyDir(t, h.root, verify.Options{PublicKeys: []signature.PublicKey{public, clientPublic}})
	if err != nil || len(report.Problems) != 0 {
		t.Fatalf("verify --public-key after the upload: %v %v", err, report.Problems)
	}
}

func TestUploadRefusesBadContentAddress(t *testing.T) {
	h, _ := newUploadHandler(t)
	for _, ca := range []string{"garbage", "fixed:r:sha256:tooshort", "text:sha1:a9993e364706816aba3e25717850c26c9cd0d89d"} {
		p := newTestPath(t, "ca", "content "+ca)
		rec := p.upload(t, h, "CA: "+ca+"\n")
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "CA") {
			t.Errorf("CA %q: %d %s, want 400", ca, rec.Code, rec.Body)
		}
	}
	p := newTestPath(t, "ca", "good content address")
	if rec := p.upload(t, h, "CA: fixed:r:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4\n"); rec.Code != http.StatusCreated {
		t.Fatalf("a valid CA: %d %s", rec.Code, rec.Body)
	}
}

// TestUploadStoresOnlyWhatItServes uploads a narinfo of exactly the size
// limit without a References line, which the stored form adds: whatever is
// accepted must be served.
func TestUploadStoresOnlyWhatItServes(t *testing.T) {
	h, _ := newUploadHandler(t)
	p := newTestPath(t, "big", "content")
	sum := sha256.Sum256(p.nar)
	head := fmt.Sprintf("StorePath: /nix/store/%s-%s\nURL: %s\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\n",
		p.hash, p.name, p.narURL(), nixbase32.EncodeToString(sum[:]), len(p.nar), nixbase32.EncodeToString(sum[:]), len(p.nar))
	var body strings.Builder
	body.WriteString(head)
	key, _, _ := signature.GenerateKeypair("client-1", rand.Reader)
	sig, _ := key.Sign(rand.Reader, "x")
	line := "Sig: " + sig.String() + "\n"
	for body.Len()+len(line)+len("System: x\n") <= nixfmt.MaxNarInfoSize {
		body.WriteString(line)
	}
	body.WriteString("System: " + strings.Repeat("x", nixfmt.MaxNarInfoSize-body.Len()-len("System: \n")) + "\n")
	if body.Len() != nixfmt.MaxNarInfoSize {
		t.Fatalf("built %d bytes, want %d", body.Len(), nixfmt.MaxNarInfoSize)
	}
	if rec := put(t, h, "/"+p.narURL(), p.nar); rec.Code != http.StatusCreated {
		t.Fatalf("PUT NAR: %d %s", rec.Code, rec.Body)
	}
	rec := put(t, h, "/"+p.hash+".narinfo", []byte(body.String()))
	served := request(t, h, http.MethodGet, "/"+p.hash+".narinfo")
	if rec.Code == http.StatusCreated && served.Code != http.StatusOK {
		t.Fatalf("the upload was accepted (%d) but the narinfo is answered %d", rec.Code, served.Code)
	}
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("upload of a narinfo whose stored form is too large: %d %s, want 400", rec.Code, rec.Body)
	}
}

// hugeGzip is a gzip body of little size that decodes to size bytes.
func hugeGzip(t *testing.T, size int) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	chunk := make([]byte, 1<<20)
	for written := 0; written < size; written += len(chunk) {
		if _, err := zw.Write(chunk[:min(len(chunk), size-written)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestUploadLogsInBoundedMemory sends a build log that decodes from a few
// hundred kilobytes to 150 MiB: it is streamed to disk, not held in memory,
// and a larger one than max_log_size is refused.
func TestUploadLogsInBoundedMemory(t *testing.T) {
	h, _ := newUploadHandler(t)
	h.Upload.MaxLogSize = 200 << 20
	h.receiver = h.newReceiver()
	body := hugeGzip(t, 150<<20)
	upload := func(target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPut, target, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testUploadToken)
		req.Header.Set("Content-Encoding", "gzip")
		if err := h.ServeHTTP(rec, req, nil); err != nil {
			rec.Code = statusOf(err)
		}
		return rec
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rec := upload("/log/pk6x23rpy0sipmq8c177y3sn8dhbv9x2-c.drv")
	runtime.ReadMemStats(&after)
	if rec.Code != http.StatusCreated {
		t.Fatalf("PUT log: %d %s", rec.Code, rec.Body)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 16<<20 {
		t.Fatalf("storing a %d-byte request that decodes to 150 MiB allocated %d MiB", len(body), allocated>>20)
	}
	if info, err := os.Stat(filepath.Join(h.root, "log", "pk6x23rpy0sipmq8c177y3sn8dhbv9x2-c.drv")); err != nil || info.Size() != 150<<20 {
		t.Fatalf("stored log: %v %v", info, err)
	}

	h.Upload.MaxLogSize = 64 << 20
	h.receiver = h.newReceiver()
	if rec := upload("/log/s1w4pv4wk26rnhszw001nryksx0g7fgy-b.drv"); rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a log over max_log_size: %d %s, want 413", rec.Code, rec.Body)
	}
	if _, err := os.Stat(filepath.Join(h.root, "log", "s1w4pv4wk26rnhszw001nryksx0g7fgy-b.drv")); err == nil {
		t.Fatal("the refused log was stored")
	}
}

func TestUploadAcceptsBrotliDocuments(t *testing.T) {
	h, _ := newUploadHandler(t)
	listing := []byte(`{"version":1,"root":{"type":"regular","size":5,"narOffset":96}}`)
	var buf bytes.Buffer
	bw := brotli.NewWriter(&buf)
	_, _ = bw.Write(listing)
	_ = bw.Close()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPut, "/wy01klyklshzl6crdbjgx2yyrwwv42sc.ls", bytes.NewReader(buf.Bytes()))
	req.Header.Set("Authorization", "Bearer "+testUploadToken)
	req.Header.Set("Content-Encoding", "br")
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusCreated {
		t.Fatalf("PUT .ls with Content-Encoding br: %d %s", rec.Code, rec.Body)
	}
	if stored, _ := os.ReadFile(filepath.Join(h.root, "wy01klyklshzl6crdbjgx2yyrwwv42sc.ls")); !bytes.Equal(stored, listing) {
		t.Fatalf("stored listing %q, want the decoded %q", stored, listing)
	}
}

// TestVerifyFindsBrokenNars stores, as an older cache might hold it, a NAR
// cut short whose narinfo states its hashes and sizes: verify --nar-hash
// reports it.
func TestVerifyFindsBrokenNars(t *testing.T) {
	root := t.TempDir()
	p := newTestPath(t, "cut", "some content that will be cut")
	p.nar = p.nar[:len(p.nar)-8]
	if err := os.MkdirAll(filepath.Join(root, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, p.narURL()), p.nar, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, p.hash+".narinfo"), []byte(p.narinfo("")), 0o644); err != nil {
		t.Fatal(err)
	}
	report, err := verifyDir(t, root, verify.Options{NarHash: true})
	if err != nil {
		t.Fatal(err)
	}
	if problems := strings.Join(report.Problems, "\n"); !strings.Contains(problems, "cut short") {
		t.Fatalf("verify --nar-hash does not report the NAR cut short: %q", problems)
	}
}

// failingReader gives data, then fails as a connection the client dropped.
type failingReader struct {
	data []byte
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestClientAbortIsNoServerError uploads a NAR whose body breaks off, as
// when the client goes away: no 500, no error-level log line, and the
// upload counts as aborted.
func TestClientAbortIsNoServerError(t *testing.T) {
	h, _ := newUploadHandler(t)
	logs, observed := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(logs)
	p := newTestPath(t, "aborted", strings.Repeat("payload ", 1000))
	before := testutil.ToFloat64(metrics.Uploads.WithLabelValues("nar", "aborted"))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPut, "/"+p.narURL(), &failingReader{data: p.nar[:len(p.nar)/2]})
	req.ContentLength = int64(len(p.nar))
	req.Header.Set("Authorization", "Bearer "+testUploadToken)
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		t.Fatal(err)
	}
	if rec.Code >= 500 {
		t.Fatalf("a client abort answered %d", rec.Code)
	}
	if n := observed.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
		t.Fatalf("a client abort logged %d error lines: %v", n, observed.All())
	}
	if got := testutil.ToFloat64(metrics.Uploads.WithLabelValues("nar", "aborted")) - before; got != 1 {
		t.Fatalf("aborted uploads rose by %v, want 1", got)
	}
	if _, err := os.Stat(filepath.Join(h.root, p.narURL())); err == nil {
		t.Fatal("half a NAR was stored")
	}
}

// TestSymlinkOutOfTheRootIsNoError asks, as a scanner would, for cache
// files that are symlinks leading out of the root, a NAR, a narinfo and a
// realisation: each a 404 (a 503 would make Nix give up on the cache),
// warned about once per file, never an error.
func TestSymlinkOutOfTheRootIsNoError(t *testing.T) {
	h, _ := newTestHandler(t)
	logs, observed := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(logs)
	rewire(t, h)
	names := []string{
		"nar/1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0.nar",
		newTestPath(t, "planted", "x").hash + ".narinfo",
		"realisations/sha256:" + strings.Repeat("ab", 32) + "!out.doi",
	}
	for _, name := range names {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(h.root, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", filepath.Join(h.root, name)); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if rec := request(t, h, http.MethodGet, "/"+name); rec.Code != http.StatusNotFound {
				t.Fatalf("GET %s through a symlink out of the root: %d", name, rec.Code)
			}
		}
	}
	if n := observed.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
		t.Fatalf("requests for a symlink out of the root logged %d error lines", n)
	}
	if n := observed.FilterLevelExact(zapcore.WarnLevel).Len(); n != len(names) {
		t.Fatalf("requests for %d symlinks out of the root logged %d warnings, want one each", len(names), n)
	}
}

// TestUploadChecksXzNars uploads xz NARs as nix does by default: small
// ones, read whole and decoded with a dictionary sized by their index,
// and large ones, streamed; both are checked in full.
func TestUploadChecksXzNars(t *testing.T) {
	h, _ := newUploadHandler(t)
	random := make([]byte, 3<<20)
	_, _ = rand.Read(random)
	for name, content := range map[string]string{"small": strings.Repeat("small NAR ", 1000), "large": string(random)} {
		t.Run(name, func(t *testing.T) {
			p := newTestPath(t, name, content)
			var compressed bytes.Buffer
			w, err := xz.NewWriter(&compressed)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(p.nar); err != nil || w.Close() != nil {
				t.Fatalf("compressing: %v", err)
			}
			if (compressed.Len() <= 1<<20) != (name == "small") { // upload reads xz NARs up to 1 MiB whole
				t.Fatalf("the %s NAR compresses to %d bytes", name, compressed.Len())
			}
			fileHash := sha256.Sum256(compressed.Bytes())
			narURL := "nar/" + nixbase32.EncodeToString(fileHash[:]) + ".nar.xz"

			// A flipped byte inside the LZMA2 data is refused.
			corrupt := bytes.Clone(compressed.Bytes())
			corrupt[len(corrupt)/2] ^= 0x55
			corruptHash := sha256.Sum256(corrupt)
			if rec := put(t, h, "/nar/"+nixbase32.EncodeToString(corruptHash[:])+".nar.xz", corrupt); rec.Code != http.StatusBadRequest {
				t.Fatalf("a corrupt xz NAR got %d %s", rec.Code, rec.Body)
			}

			if rec := put(t, h, "/"+narURL, compressed.Bytes()); rec.Code != http.StatusCreated {
				t.Fatalf("PUT %s: %d %s", narURL, rec.Code, rec.Body)
			}
			narHash := sha256.Sum256(p.nar)
			narinfo := fmt.Sprintf("StorePath: /nix/store/%s-%s\nURL: %s\nCompression: xz\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n",
				p.hash, p.name, narURL, nixbase32.EncodeToString(fileHash[:]), compressed.Len(), nixbase32.EncodeToString(narHash[:]), len(p.nar))
			if rec := put(t, h, "/"+p.hash+".narinfo", []byte(narinfo)); rec.Code != http.StatusCreated {
				t.Fatalf("PUT narinfo: %d %s", rec.Code, rec.Body)
			}
		})
	}
}
