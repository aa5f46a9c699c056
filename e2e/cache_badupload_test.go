package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// put sends an authenticated PUT and returns the status and body.
func put(t *testing.T, url string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("nix", uploadToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(text))
}

// fileCachePath is one path of a closure copied to a file:// cache: its
// narinfo text and NAR bytes.
type fileCachePath struct {
	hash    string
	narinfo string
	narURL  string
	nar     []byte
}

// pathsOf copies a closure to a new file:// cache and reads each path back.
func pathsOf(t *testing.T, nix *harness.Nix, closure harness.Closure, compression string) map[string]fileCachePath {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if c := nix.Copy("--to", "file://"+src+"?compression="+compression, closure.Top); c.Err != nil {
		t.Fatalf("filling a file cache:\n%s", c)
	}
	out := map[string]fileCachePath{}
	for _, p := range closure.Paths {
		hash := strings.SplitN(filepath.Base(p), "-", 2)[0]
		text, err := os.ReadFile(filepath.Join(src, hash+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		url := regexp.MustCompile(`(?m)^URL: (.*)$`).FindStringSubmatch(string(text))[1]
		nar, err := os.ReadFile(filepath.Join(src, url))
		if err != nil {
			t.Fatal(err)
		}
		role := p[strings.LastIndex(p, "-")+1:] // leaf, middle or top
		out[role] = fileCachePath{hash: hash, narinfo: string(text), narURL: url, nar: nar}
	}
	return out
}

func replaceLine(t *testing.T, narinfo, key, value string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + key + `: .*$`)
	if !re.MatchString(narinfo) {
		t.Fatalf("narinfo has no %s line:\n%s", key, narinfo)
	}
	return re.ReplaceAllString(narinfo, key+": "+value)
}

// backend is where a test's cache is kept: a directory, or a bucket of a
// real S3 server.
type backend struct {
	// options are the nix_cache's options that say where.
	options []string
	// stored reports whether the cache holds the object name.
	stored func(name string) bool
	// verifyClean runs caddy nix-cache verify on the cache and fails the
	// test unless it is clean.
	verifyClean func(publicKeyFile string)
}

// forEachBackend runs test with a cache in a directory and with one in a
// bucket.
func forEachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	t.Run("dir", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "cache")
		test(t, backend{
			options: []string{"root " + root},
			stored: func(name string) bool {
				_, err := os.Stat(filepath.Join(root, name))
				return err == nil
			},
			verifyClean: func(publicKeyFile string) { verifyClean(t, root, publicKeyFile) },
		})
	})
	t.Run("s3", func(t *testing.T) {
		server := harness.StartS3(t)
		server.CreateBucket("nix")
		test(t, backend{
			options: []string{server.StorageBlock("nix", "main/")},
			stored: func(name string) bool {
				_, err := server.Client().StatObject(context.Background(), "nix", "main/"+name, minio.StatObjectOptions{})
				return err == nil
			},
			verifyClean: func(publicKeyFile string) { verifyBucket(t, server, publicKeyFile) },
		})
	})
}

func TestBadUploadsAreRefused(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		forEachBackend(t, func(t *testing.T, store backend) { badUploadsAreRefused(t, client, store) })
	})
}

func badUploadsAreRefused(t *testing.T, client harness.NixClient, store backend) {
	nix := client.New(t, "")
	secret, public := keygen(t, "bad-1")
	caddy := harness.StartCaddy(t, harness.Caddyfile{Cache: &harness.CacheSite{
		Options: append(slices.Clone(store.options), "secret_key_file "+secret),
		Upload:  []string{"token " + uploadToken, "max_nar_size 512KiB", "max_log_size 1KiB"},
	}}.String(), harness.CaddyOptions{})
	paths := pathsOf(t, nix, nix.BuildClosure("bad", 1<<20), "none")
	other := pathsOf(t, nix, nix.BuildClosure("other", 0), "none")
	leaf, middle, top := paths["leaf"], paths["middle"], paths["top"]
	base := caddy.URL() + "/"

	if status, body := put(t, base+leaf.narURL, bytes.NewReader(leaf.nar)); status != http.StatusCreated {
		t.Fatalf("PUT of a good NAR: %d %s", status, body)
	}
	tests := []struct {
		name   string
		path   string
		body   []byte
		status int
	}{
		{"NarHash mismatch", leaf.hash + ".narinfo", []byte(replaceLine(t, leaf.narinfo, "NarHash", "sha256:"+strings.Repeat("1", 52))), 400},
		{"NarSize mismatch", leaf.hash + ".narinfo", []byte(replaceLine(t, leaf.narinfo, "NarSize", "12345")), 400},
		{"FileSize mismatch", leaf.hash + ".narinfo", []byte(replaceLine(t, leaf.narinfo, "FileSize", "999")), 400},
		{"FileHash mismatch", leaf.hash + ".narinfo", []byte(replaceLine(t, leaf.narinfo, "FileHash", "sha256:"+strings.Repeat("1", 52))), 400},
		{"narinfo before its NAR", middle.hash + ".narinfo", []byte(middle.narinfo), 400},
		{"malformed narinfo", leaf.hash + ".narinfo", []byte("StorePath /nix/store/x\nthis is not a narinfo\n"), 400},
		{"StorePath not matching the URL", other["leaf"].hash + ".narinfo", []byte(leaf.narinfo), 400},
		{"NAR whose body does not match its name", other["leaf"].narURL, leaf.nar, 400},
		{"NAR that is not a NAR", "nar/" + strings.Repeat("0", 52) + ".nar", []byte("hello"), 400},
		{"NAR over max_nar_size", top.narURL, top.nar, 413},
		{"traversal with ..", "../../etc/" + leaf.hash + ".narinfo", []byte(leaf.narinfo), 400},
		{"nested name", "nar/x/" + leaf.hash + ".narinfo", []byte(leaf.narinfo), 400},
		{"encoded slash", "nar%2f..%2f" + leaf.hash + ".narinfo", []byte(leaf.narinfo), 400},
		{"encoded dots", "%2e%2e/" + leaf.hash + ".narinfo", []byte(leaf.narinfo), 400},
		{"encoded traversal in a log name", "log/..%2f..%2fescape.drv", []byte("log"), 400},
		{"unknown file", "cache.sec", []byte("secret"), 400},
	}
	// An xz NAR whose block header asks the decoder for a 4 GiB dictionary.
	hugeDict := withXzDictionary(t, pathsOf(t, nix, nix.BuildClosure("xzdict", 0), "xz")["leaf"].nar, 40)
	hugeDictPath := "nar/" + nixbase32.EncodeToString(sha256Of(hugeDict)) + ".nar.xz"
	tests = append(tests, struct {
		name   string
		path   string
		body   []byte
		status int
	}{"xz NAR asking for a 4 GiB dictionary", hugeDictPath, hugeDict, 400})
	if status, body := put(t, base+hugeDictPath, bytes.NewReader(hugeDict)); !strings.Contains(body, "dictionary") {
		t.Errorf("an xz NAR asking for a 4 GiB dictionary: %d %q, want a reason that names the dictionary", status, body)
	}
	for _, tt := range tests {
		status, body := put(t, base+tt.path, bytes.NewReader(tt.body))
		if status != tt.status || body == "" || strings.Contains(body, "\n") {
			t.Errorf("%s: PUT %s answered %d %q; want %d with a one-line reason", tt.name, tt.path, status, body, tt.status)
		}
	}
	// A log over max_log_size sent without a length is refused once read
	// past the limit: nothing of it is left, not even its directory.
	bigLog := io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("a line of the build log\n"), 100)))
	if status, body := put(t, base+"log/"+strings.Repeat("1", 32)+"-big.drv", bigLog); status != http.StatusRequestEntityTooLarge {
		t.Errorf("a log over max_log_size: %d %q, want 413", status, body)
	}
	if store.stored("log") {
		t.Errorf("a refused log left log/ behind")
	}
	for _, name := range []string{leaf.hash, middle.hash, top.hash, other["leaf"].hash} {
		if store.stored(name + ".narinfo") {
			t.Errorf("a refused narinfo %s was written", name)
		}
	}
	for _, nar := range []string{other["leaf"].narURL, top.narURL, hugeDictPath, "nar/" + strings.Repeat("0", 52) + ".nar"} {
		if store.stored(nar) {
			t.Errorf("a refused NAR %s was written", nar)
		}
	}
	store.verifyClean(writePublicKey(t, public))
}

func TestNarinfoWithMissingReferenceIsRefused(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		root := filepath.Join(t.TempDir(), "cache")
		secret, public := keygen(t, "refs-1")
		caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})
		paths := pathsOf(t, nix, nix.BuildClosure("refs", 0), "xz")
		base := caddy.URL() + "/"

		top := paths["top"]
		if status, body := put(t, base+top.narURL, bytes.NewReader(top.nar)); status != http.StatusCreated {
			t.Fatalf("PUT of the top NAR: %d %s", status, body)
		}
		status, body := put(t, base+top.hash+".narinfo", strings.NewReader(top.narinfo))
		if status != http.StatusBadRequest || !strings.Contains(body, "is not in the cache") {
			t.Fatalf("narinfo before its references: %d %q, want 400 naming the missing reference", status, body)
		}
		// In dependency order, the same uploads succeed.
		for _, role := range []string{"leaf", "middle", "top"} {
			p := paths[role]
			if status, body := put(t, base+p.narURL, bytes.NewReader(p.nar)); status != http.StatusCreated {
				t.Fatalf("PUT %s NAR: %d %s", role, status, body)
			}
			// Newer nix may compress narinfo bodies and say so in Content-Encoding.
			var gz bytes.Buffer
			w := gzip.NewWriter(&gz)
			if _, err := w.Write([]byte(p.narinfo)); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest(http.MethodPut, base+p.hash+".narinfo", &gz)
			req.Header.Set("Content-Encoding", "gzip")
			req.SetBasicAuth("nix", uploadToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("PUT %s narinfo with Content-Encoding gzip: %s", role, resp.Status)
			}
		}
		publicFile := filepath.Join(t.TempDir(), "cache.pub")
		os.WriteFile(publicFile, []byte(public+"\n"), 0o644)
		verifyClean(t, root, publicFile)
	})
}

func TestKillDuringUploadLeavesCleanCache(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix, caddy, root, public := startUploadCache(t, client, "crash-1")
		closure := nix.BuildClosure("crash", 64<<20)
		paths := pathsOf(t, nix, closure, "none")
		top := paths["top"]

		// Stream the large NAR slowly, and kill caddy halfway through.
		pr, pw := io.Pipe()
		go func() {
			chunk := 1 << 20
			for off := 0; off < len(top.nar); off += chunk {
				if _, err := pw.Write(top.nar[off:min(off+chunk, len(top.nar))]); err != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			pw.Close()
		}()
		uploadDone := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPut, caddy.URL()+"/"+top.narURL, pr)
			req.SetBasicAuth("nix", uploadToken)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			uploadDone <- err
		}()
		var partial string
		err := harness.Eventually(30*time.Second, 20*time.Millisecond, func() error {
			matches, _ := filepath.Glob(filepath.Join(root, "nar", ".upload-*"))
			for _, m := range matches {
				if info, err := os.Stat(m); err == nil && info.Size() > 8<<20 {
					partial = m
					return nil
				}
			}
			return os.ErrNotExist
		})
		if err != nil {
			t.Fatalf("the upload never got 8 MiB into a temporary file: %v", err)
		}
		caddy.Kill()
		_ = pr.CloseWithError(io.ErrClosedPipe)
		if err := <-uploadDone; err == nil {
			t.Fatal("the upload succeeded although caddy was killed during it")
		}
		if _, err := os.Stat(partial); err != nil {
			t.Fatalf("the partial upload vanished before the restart: %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, top.narURL)); err == nil {
			t.Fatal("a half-received NAR is visible under its final name")
		}

		caddy.Start()
		if _, err := os.Stat(partial); err == nil {
			t.Fatalf("the interrupted upload %s was not swept at start-up", partial)
		}
		publicFile := filepath.Join(t.TempDir(), "cache.pub")
		os.WriteFile(publicFile, []byte(public+"\n"), 0o644)
		verifyClean(t, root, publicFile)
		// zstd: xz-compressing 64 MiB of random data would dominate the test.
		if c := nix.Copy("--to", caddy.URL()+"/?compression=zstd", closure.Top); c.Err != nil {
			t.Fatalf("nix copy after the restart:\n%s", c)
		}
		verifyClean(t, root, publicFile)
		if c, _ := substitute(nix, caddy.URL(), public, closure.Top); c.Err != nil {
			t.Fatalf("substituting after the restart:\n%s", c)
		}
	})
}

// withXzDictionary rewrites the LZMA2 dictionary size byte in the first
// block header of an xz stream, fixing the header's CRC32.
func withXzDictionary(t *testing.T, stream []byte, props byte) []byte {
	t.Helper()
	s := bytes.Clone(stream)
	headerSize := (int(s[12]) + 1) * 4
	header := s[12 : 12+headerSize]
	i := bytes.Index(header[2:], []byte{0x21, 0x01}) // LZMA2, one property byte
	if i < 0 {
		t.Fatal("no LZMA2 filter in the xz block header")
	}
	header[2+i+2] = props
	binary.LittleEndian.PutUint32(header[headerSize-4:], crc32.ChecksumIEEE(header[:headerSize-4]))
	return s
}

func sha256Of(data []byte) []byte {
	sum := sha256.Sum256(data)
	return sum[:]
}

// TestHostileUploadsAreRefused plays a job with an upload credential that
// tries to store what the cache must never sign: a NAR cut short or with
// data after its end, a garbage content address, a signature forged under
// the cache's own key name, and another NAR for a path the cache holds.
func TestHostileUploadsAreRefused(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix, caddy, root, public := startUploadCache(t, client, "hostile-1")
		base := caddy.URL() + "/"
		built := nix.BuildClosure("built", 0)
		if c := nix.Copy("--to", caddy.URL(), built.Top); c.Err != nil {
			t.Fatalf("nix copy:\n%s", c)
		}
		honest := pathsOf(t, nix, built, "none")["leaf"]
		evil := pathsOf(t, nix, nix.BuildClosure("evil", 0), "none")["leaf"]

		for name, nar := range map[string][]byte{
			"a NAR cut short":          evil.nar[:len(evil.nar)-8],
			"a NAR with data after it": append(bytes.Clone(evil.nar), 0),
		} {
			url := "nar/" + nixbase32.EncodeToString(sha256Of(nar)) + ".nar"
			if status, body := put(t, base+url, bytes.NewReader(nar)); status != http.StatusBadRequest || !strings.Contains(body, "NAR") {
				t.Errorf("%s: %d %q, want 400", name, status, body)
			}
		}

		// The evil NAR under the honest path's name: a conflict, and the cache
		// keeps serving what was built.
		if status, body := put(t, base+evil.narURL, bytes.NewReader(evil.nar)); status != http.StatusCreated {
			t.Fatalf("PUT of the other NAR: %d %s", status, body)
		}
		storePath := regexp.MustCompile(`(?m)^StorePath: .*$`)
		swapped := storePath.ReplaceAllString(evil.narinfo, storePath.FindString(honest.narinfo))
		if status, body := put(t, base+honest.hash+".narinfo", strings.NewReader(swapped)); status != http.StatusConflict {
			t.Errorf("replacing %s with another NAR: %d %q, want 409", honest.hash, status, body)
		}
		narHash := regexp.MustCompile(`(?m)^NarHash: .*$`)
		if served := get(t, base+honest.hash+".narinfo", nil, http.StatusOK); narHash.FindString(served) != narHash.FindString(honest.narinfo) {
			t.Errorf("the cache serves another NAR for the built path now:\n%s", served)
		}

		if status, body := put(t, base+evil.hash+".narinfo", strings.NewReader(evil.narinfo+"CA: garbage\n")); status != http.StatusBadRequest || !strings.Contains(body, "CA") {
			t.Errorf("a narinfo with CA: garbage: %d %q, want 400", status, body)
		}
		if status, body := put(t, base+evil.hash+".narinfo", strings.NewReader(evil.narinfo+"Sig: hostile-1:"+strings.Repeat("A", 86)+"==\n")); status != http.StatusCreated {
			t.Fatalf("a narinfo carrying a signature under the cache's key name: %d %q", status, body)
		}
		stored, _ := os.ReadFile(filepath.Join(root, evil.hash+".narinfo"))
		if strings.Contains(string(stored), "hostile-1:AAAA") {
			t.Errorf("the forged signature was stored:\n%s", stored)
		}
		publicFile := filepath.Join(t.TempDir(), "cache.pub")
		os.WriteFile(publicFile, []byte(public+"\n"), 0o644)
		verifyClean(t, root, publicFile)
	})
}
