package caddynix

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/cargoxx-pkgs/runner/internal/nixstore/nixstoretest"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// liveClosure makes a store of three paths, kept away from /nix/store
// though named in it, with what NARs have to get right: symlinks, an
// executable, empty files and directories, and a file larger than one read.
func liveClosure(t *testing.T) *nixstoretest.Store {
	t.Helper()
	big := make([]byte, 700<<10)
	_, _ = rand.Read(big)
	other, _, err := signature.GenerateKeypair("upstream-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return nixstoretest.New(t,
		nixstoretest.Path{Name: "leaf"},
		nixstoretest.Path{Name: "middle", Files: map[string]string{"lib/libm.so": "elf", "lib/libm.so.1": "-> libm.so", "empty": "", "dir/": ""}, References: []int{0}},
		nixstoretest.Path{Name: "top", Files: map[string]string{"bin/top*": "#!/bin/sh\n", "share/big": string(big), "share/up": "-> ../bin"}, References: []int{0, 1},
			Sigs: mustSign(t, other, "anything")},
	)
}

func mustSign(t *testing.T, key signature.SecretKey, message string) string {
	t.Helper()
	sig, err := key.Sign(rand.Reader, message)
	if err != nil {
		t.Fatal(err)
	}
	return sig.String()
}

// newLiveHandler provisions a handler with an empty cache root and the
// live store s.
func newLiveHandler(t *testing.T, s *nixstoretest.Store, compression string) (*Handler, signature.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	public, err := nixfmt.GenerateKeyPair("unit-1", filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{
		Root:           filepath.Join(dir, "cache"),
		SecretKeyFiles: []string{filepath.Join(dir, "k.sec")},
		LiveStore:      &LiveStoreConfig{Dir: s.Dir, Compression: compression},
	}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return h, public
}

// liveNarInfo fetches and checks the narinfo of storePath.
func liveNarInfo(t *testing.T, h *Handler, public signature.PublicKey, storePath string) *narinfo.NarInfo {
	t.Helper()
	rec := request(t, h, http.MethodGet, "/"+hashPart(storePath)+".narinfo")
	if rec.Code != http.StatusOK {
		t.Fatalf("narinfo of %s: %d %s", storePath, rec.Code, rec.Body)
	}
	info, err := nixfmt.ParseNarInfo(rec.Body.Bytes())
	if err != nil {
		t.Fatalf("narinfo does not parse: %v\n%s", err, rec.Body)
	}
	if info.StorePath != storePath {
		t.Fatalf("narinfo is of %s, want %s", info.StorePath, storePath)
	}
	signed := false
	for _, sig := range info.Signatures {
		if sig.Name == public.Name {
			signed = public.Verify(nixfmt.Fingerprint(info), sig)
		}
	}
	if !signed {
		t.Fatalf("narinfo of %s carries no valid signature by %s:\n%s", storePath, public.Name, rec.Body)
	}
	return info
}

func TestLiveStoreServesItsPaths(t *testing.T) {
	s := liveClosure(t)
	h, public := newLiveHandler(t, s, "")
	leaf, middle, top := s.Paths[0], s.Paths[1], s.Paths[2]

	info := liveNarInfo(t, h, public, top)
	wantRefs := []string{filepath.Base(leaf), filepath.Base(middle)}
	slices.Sort(wantRefs)
	if !slices.Equal(info.References, wantRefs) {
		t.Errorf("References %v, want %v", info.References, wantRefs)
	}
	if info.Compression != "none" || info.FileSize != info.NarSize || info.FileHash.String() != info.NarHash.String() {
		t.Errorf("an uncompressed NAR's file is the NAR: %+v", info)
	}
	if len(info.Signatures) != 2 || !slices.ContainsFunc(info.Signatures, func(s signature.Signature) bool { return s.Name == "upstream-1" }) {
		t.Errorf("the store's own signature is not kept beside ours: %v", info.Signatures)
	}

	// The NAR is what the files make, and what the narinfo says.
	var want bytes.Buffer
	if _, err := nixstore.WriteNar(&want, s.FSPath(top)); err != nil {
		t.Fatal(err)
	}
	rec := request(t, h, http.MethodGet, "/"+info.URL)
	if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), want.Bytes()) {
		t.Fatalf("GET %s: %d, %d bytes, want the %d of the NAR", info.URL, rec.Code, rec.Body.Len(), want.Len())
	}
	if got := rec.Header().Get("Content-Length"); got != fmt.Sprint(info.NarSize) {
		t.Errorf("Content-Length %q, want %d", got, info.NarSize)
	}
	if sum := sha256.Sum256(rec.Body.Bytes()); !bytes.Equal(sum[:], info.NarHash.Digest()) {
		t.Error("NAR does not hash to NarHash")
	}

	// A resumed download: one range, made again from the files.
	req := httptest.NewRequest(http.MethodGet, "/"+info.URL, nil)
	req.Header.Set("Range", "bytes=1000-300000")
	ranged := httptest.NewRecorder()
	if err := h.ServeHTTP(ranged, req, nil); err != nil {
		t.Fatal(err)
	}
	if ranged.Code != http.StatusPartialContent || !bytes.Equal(ranged.Body.Bytes(), want.Bytes()[1000:300001]) {
		t.Errorf("Range 1000-300000: %d with %d bytes", ranged.Code, ranged.Body.Len())
	}
	req.Header.Set("Range", "bytes=-100")
	suffix := httptest.NewRecorder()
	if err := h.ServeHTTP(suffix, req, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(suffix.Body.Bytes(), want.Bytes()[want.Len()-100:]) {
		t.Errorf("Range -100: %d with %d bytes", suffix.Code, suffix.Body.Len())
	}

	// Two ranges at once: a multipart answer, each part made again.
	req.Header.Set("Range", "bytes=0-9,200000-200099")
	multi := httptest.NewRecorder()
	if err := h.ServeHTTP(multi, req, nil); err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(multi.Header().Get("Content-Type"))
	if multi.Code != http.StatusPartialContent || err != nil {
		t.Fatalf("two ranges: %d, %q", multi.Code, multi.Header().Get("Content-Type"))
	}
	parts := multipart.NewReader(multi.Body, params["boundary"])
	for _, want := range [][]byte{want.Bytes()[0:10], want.Bytes()[200000:200100]} {
		part, err := parts.NextPart()
		if err != nil {
			t.Fatalf("two ranges: %v", err)
		}
		if got, _ := io.ReadAll(part); !bytes.Equal(got, want) {
			t.Errorf("two ranges: part %s is not the NAR's bytes", part.Header.Get("Content-Range"))
		}
	}

	// The listing points into the NAR.
	rec = request(t, h, http.MethodGet, "/"+hashPart(top)+".ls")
	var listing struct {
		Root struct {
			Entries map[string]struct {
				Entries map[string]struct {
					Size      int64 `json:"size"`
					NarOffset int64 `json:"narOffset"`
				} `json:"entries"`
			} `json:"entries"`
		} `json:"root"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &listing); err != nil {
		t.Fatalf("listing: %d %v\n%s", rec.Code, err, rec.Body)
	}
	big := listing.Root.Entries["share"].Entries["big"]
	content, _ := os.ReadFile(filepath.Join(s.FSPath(top), "share", "big"))
	if big.Size != int64(len(content)) || !bytes.Equal(want.Bytes()[big.NarOffset:big.NarOffset+big.Size], content) {
		t.Errorf("listing's share/big: size %d at %d does not point at its contents", big.Size, big.NarOffset)
	}

	// A single-file path.
	leafInfo := liveNarInfo(t, h, public, leaf)
	if rec := request(t, h, http.MethodGet, "/"+leafInfo.URL); rec.Code != http.StatusOK || rec.Body.Len() != int(leafInfo.NarSize) {
		t.Errorf("leaf NAR: %d, %d bytes", rec.Code, rec.Body.Len())
	}
}

func TestLiveStoreMisses(t *testing.T) {
	s := liveClosure(t)
	h, public := newLiveHandler(t, s, "")
	top := s.Paths[2]
	info := liveNarInfo(t, h, public, top)
	missing := nixstoretest.RandomHash()
	narHash := strings.TrimSuffix(strings.TrimPrefix(info.URL, "nar/"), ".nar?hash="+hashPart(top))
	otherNarHash := strings.Repeat("0", 52)
	for _, target := range []string{
		"/" + missing + ".narinfo",
		"/" + missing + ".ls",
		"/nar/" + narHash + ".nar?hash=" + missing,
		// The path rebuilt differently since the narinfo was read.
		"/nar/" + otherNarHash + ".nar?hash=" + hashPart(top),
		// No store path named.
		"/nar/" + narHash + ".nar",
		"/nar/" + narHash + ".nar?hash=../../etc",
		"/nar/" + narHash + ".nar.xz?hash=" + hashPart(top),
		"/log/" + missing + "-top.drv",
	} {
		if rec := request(t, h, http.MethodGet, target); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", target, rec.Code)
		}
	}
}

func TestLiveStoreSendsZstd(t *testing.T) {
	s := liveClosure(t)
	h, public := newLiveHandler(t, s, "zstd")
	top := s.Paths[2]
	info := liveNarInfo(t, h, public, top)
	if info.Compression != "zstd" || !strings.Contains(info.URL, ".nar.zst?hash=") || info.FileHash != nil {
		t.Fatalf("zstd narinfo: URL %s, Compression %s, FileHash %v", info.URL, info.Compression, info.FileHash)
	}
	rec := request(t, h, http.MethodGet, "/"+info.URL)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d", info.URL, rec.Code)
	}
	dec, err := zstd.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var got, want bytes.Buffer
	if _, err := got.ReadFrom(dec); err != nil {
		t.Fatalf("decompressing: %v", err)
	}
	if _, err := nixstore.WriteNar(&want, s.FSPath(top)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Errorf("zstd NAR decompresses to %d bytes, not the %d of the NAR", got.Len(), want.Len())
	}
	// A client holding a narinfo from before compression was turned on.
	plain := strings.Replace(info.URL, ".nar.zst?", ".nar?", 1)
	if rec := request(t, h, http.MethodGet, "/"+plain); rec.Code != http.StatusOK || rec.Body.Len() != want.Len() {
		t.Errorf("GET %s: %d, %d bytes", plain, rec.Code, rec.Body.Len())
	}
}

// TestLiveStorePathChangedWhileServed changes a path's files after its
// narinfo was read: the NAR response is cut before its end, and the
// connection aborted, so no client takes it for the registered NAR.
func TestLiveStorePathChangedWhileServed(t *testing.T) {
	for _, compression := range []string{"none", "zstd"} {
		t.Run(compression, func(t *testing.T) {
			s := liveClosure(t)
			h, public := newLiveHandler(t, s, compression)
			top := s.Paths[2]
			info := liveNarInfo(t, h, public, top)
			if err := os.Chmod(filepath.Join(s.FSPath(top), "bin"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(s.FSPath(top), "bin", "top"), []byte("#!/bin/sh\nrm -rf /\n"), 0o555); err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			aborted := func() (aborted bool) {
				defer func() {
					if r := recover(); r != nil {
						if r != http.ErrAbortHandler { //nolint:errorlint // the value http.Server looks for
							panic(r)
						}
						aborted = true
					}
				}()
				_ = h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/"+info.URL, nil), nil)
				return false
			}()
			if !aborted {
				t.Fatalf("the response of a changed path was not aborted: %d with %d bytes", rec.Code, rec.Body.Len())
			}
			if compression == "none" && rec.Body.Len() >= int(info.NarSize) {
				t.Errorf("%d bytes sent of a NAR of %d that no longer matches", rec.Body.Len(), info.NarSize)
			}
			if compression == "zstd" {
				dec, _ := zstd.NewReader(rec.Body)
				defer dec.Close()
				if _, err := new(bytes.Buffer).ReadFrom(dec); err == nil {
					t.Error("what was sent of a changed path decompresses as a whole zstd stream")
				}
			}
		})
	}
}

func TestLiveStoreNeedsItsDatabase(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "nix", "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]*LiveStoreConfig{
		"no database":      {Dir: store},
		"not a directory":  {Dir: filepath.Join(dir, "nowhere")},
		"bad compression":  {Dir: store, Compression: "xz"},
		"database garbage": {Dir: store, Database: writeFile(t, filepath.Join(dir, "db.sqlite"), strings.Repeat("garbage ", 512))},
	} {
		h := &Handler{Root: filepath.Join(dir, "cache"), LiveStore: cfg}
		err := h.Provision(testContext(t))
		_ = h.Cleanup()
		if err == nil || !strings.Contains(err.Error(), "store") {
			t.Errorf("%s: Provision = %v, want an error about the store", name, err)
		}
	}
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLiveStoreWithoutACacheOfItsOwn serves a store as harmonia would:
// no root, and nothing that would need one.
func TestLiveStoreWithoutACacheOfItsOwn(t *testing.T) {
	s := liveClosure(t)
	dir := t.TempDir()
	public, err := nixfmt.GenerateKeyPair("unit-1", filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{SecretKeyFiles: []string{filepath.Join(dir, "k.sec")}, LiveStore: &LiveStoreConfig{Dir: s.Dir}}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	info := liveNarInfo(t, h, public, s.Paths[2])
	if rec := request(t, h, http.MethodGet, "/"+info.URL); rec.Code != http.StatusOK || rec.Body.Len() != int(info.NarSize) {
		t.Errorf("NAR: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if rec := request(t, h, http.MethodGet, "/nix-cache-info"); rec.Code != http.StatusOK {
		t.Errorf("GET /nix-cache-info: %d", rec.Code)
	}
	if rec := request(t, h, http.MethodGet, "/"); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "also answers: the live store "+s.Dir) {
		t.Errorf("landing page: %d\n%s", rec.Code, rec.Body)
	}

	for name, needy := range map[string]*Handler{
		"upload":    {LiveStore: &LiveStoreConfig{Dir: s.Dir}, Upload: &UploadConfig{Tokens: []string{testUploadToken}}},
		"retention": {LiveStore: &LiveStoreConfig{Dir: s.Dir}, Retention: &RetentionConfig{}},
		"keep":      {Upstreams: []*UpstreamConfig{{URL: "https://cache.example.org", TrustedPublicKeys: []string{public.String()}, Keep: true}}},
		"nothing":   {},
	} {
		err := needy.Provision(testContext(t))
		_ = needy.Cleanup()
		if err == nil || !strings.Contains(err.Error(), "root") {
			t.Errorf("%s without root: Provision = %v, want an error naming root", name, err)
		}
	}
}

// TestLiveStoreDatabaseLocked: a database a writer keeps locked past the
// busy timeout is a 503 for that request, never a miss a client would
// remember, and serving resumes when the lock goes.
func TestLiveStoreDatabaseLocked(t *testing.T) {
	s := liveClosure(t)
	h, public := newLiveHandler(t, s, "")
	db, err := sql.Open("sqlite", "file:"+s.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := conn.ExecContext(t.Context(), "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	if rec := request(t, h, http.MethodGet, "/"+hashPart(s.Paths[0])+".narinfo"); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("narinfo while the database is locked: %d, want 503", rec.Code)
	}
	if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	liveNarInfo(t, h, public, s.Paths[0])
}

// TestLiveStorePathCollectedAfterItWasServed: once a path's NAR has been
// checked, it is sent by size; a path collected since is still cut short.
func TestLiveStorePathCollectedAfterItWasServed(t *testing.T) {
	s := liveClosure(t)
	h, public := newLiveHandler(t, s, "")
	top := s.Paths[2]
	info := liveNarInfo(t, h, public, top)
	if rec, aborted := getThrough(h, "/"+info.URL); aborted || rec.Body.Len() != int(info.NarSize) {
		t.Fatalf("first download: aborted %v, %d bytes", aborted, rec.Body.Len())
	}
	if err := os.Chmod(filepath.Join(s.FSPath(top), "share"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(s.FSPath(top), "share", "up")); err != nil {
		t.Fatal(err)
	}
	rec, aborted := getThrough(h, "/"+info.URL)
	if !aborted || rec.Body.Len() >= int(info.NarSize) {
		t.Errorf("a path changed after it was served whole: aborted %v after %d of %d bytes", aborted, rec.Body.Len(), info.NarSize)
	}
}

// hashPart is the hash part of a store path.
func hashPart(storePath string) string {
	return filepath.Base(storePath)[:cacheurl.HashLen]
}

// TestLiveStoreForgetsWhatNixCollects: narinfos and NARs are answered
// from memory while the database is unchanged; once Nix collects a path,
// or collects and registers it again with other contents, the next
// request answers what the database now says.
func TestLiveStoreForgetsWhatNixCollects(t *testing.T) {
	s := liveClosure(t)
	h, public := newLiveHandler(t, s, "")
	leaf := s.Paths[0]
	before := liveNarInfo(t, h, public, leaf)
	liveNarInfo(t, h, public, leaf) // from memory

	db, err := sql.Open("sqlite", "file:"+s.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	ctx := t.Context()
	// As Nix's garbage collector does: references, then the path.
	if _, err := db.ExecContext(ctx, `delete from Refs where referrer = (select id from ValidPaths where path = ?)`, leaf); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `delete from ValidPaths where path = ?`, leaf); err != nil {
		t.Fatal(err)
	}
	if rec := request(t, h, http.MethodGet, "/"+hashPart(leaf)+".narinfo"); rec.Code != http.StatusNotFound {
		t.Fatalf("narinfo of a collected path: %d, want 404\n%s", rec.Code, rec.Body)
	}
	if rec, _ := getThrough(h, "/"+before.URL); rec.Code != http.StatusNotFound {
		t.Fatalf("NAR of a collected path: %d, want 404", rec.Code)
	}

	// Built again, differently.
	if err := os.WriteFile(s.FSPath(leaf), []byte("built again\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	narHash := sha256.New()
	size, err := nixstore.WriteNar(narHash, s.FSPath(leaf))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `insert into ValidPaths (path, hash, registrationTime, narSize) values (?, ?, 1700000100, ?)`,
		leaf, fmt.Sprintf("sha256:%x", narHash.Sum(nil)), size); err != nil {
		t.Fatal(err)
	}
	after := liveNarInfo(t, h, public, leaf)
	if after.NarHash.String() == before.NarHash.String() || after.NarSize != uint64(size) {
		t.Fatalf("the path registered again is answered with its old NAR %s (%d bytes)", after.NarHash, after.NarSize)
	}
	if rec, aborted := getThrough(h, "/"+after.URL); aborted || rec.Body.Len() != int(size) {
		t.Fatalf("NAR of the path registered again: aborted %v, %d bytes, want %d", aborted, rec.Body.Len(), size)
	}
}
