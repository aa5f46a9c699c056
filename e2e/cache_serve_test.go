package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// cacheCaddyfile serves root as a Nix cache signed by the given keys.
func cacheCaddyfile(root string, keys ...string) string {
	return harness.Caddyfile{Cache: &harness.CacheSite{Options: harness.CacheOptions(root, keys...)}}.String()
}

// keygen makes a key pair with `caddy nix-cache keygen` and returns the
// secret key file and the public key.
func keygen(t *testing.T, name string) (string, string) {
	t.Helper()
	return harness.TempKeygen(t, name)
}

// largestNar returns the largest uncompressed NAR in the cache at root,
// the top path's of a closure built with a payload of at least size
// bytes, and its content.
func largestNar(t *testing.T, root string, size int) (string, []byte) {
	t.Helper()
	nars, _ := filepath.Glob(filepath.Join(root, "nar", "*.nar"))
	var nar string
	var whole []byte
	for _, candidate := range nars {
		if data, _ := os.ReadFile(candidate); len(data) > len(whole) {
			nar, whole = candidate, data
		}
	}
	if len(whole) < size {
		t.Fatalf("no NAR with the payload of %d bytes among %v", size, nars)
	}
	return nar, whole
}

// substitute realises top in a fresh chroot store from the cache at url,
// trusting only trustedKey, and returns the command's result and the store.
// The consumer has a lookup cache of its own, as a separate machine would.
func substitute(nix *harness.Nix, url, trustedKey, top string) (harness.Command, string) {
	nix = nix.WithFreshCache()
	store := nix.ChrootStore()
	c := nix.Run("nix-store", "--store", store, "--realise", top,
		"--option", "substituters", url,
		"--option", "trusted-public-keys", trustedKey)
	return c, store
}

// substituteWhole is substitute for a closure that must arrive whole: the
// test fails, saying what was tried, unless the chroot store then holds
// exactly the closure. It returns the store.
func substituteWhole(t *testing.T, nix *harness.Nix, url, trustedKey string, closure harness.Closure, what string) string {
	t.Helper()
	c, store := substitute(nix, url, trustedKey, closure.Top)
	if c.Err != nil {
		t.Fatalf("%s:\n%s", what, c)
	}
	if got := nix.StorePaths(store); !slices.Equal(got, closure.Paths) {
		t.Fatalf("%s: the store holds %v, want %v", what, got, closure.Paths)
	}
	return store
}

func TestNixSubstitutesSignedClosure(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		for _, compression := range []string{"xz", "zstd", "none", "br"} {
			t.Run(compression, func(t *testing.T) {
				closure := nix.BuildClosure("serve-"+compression, 0)
				root := filepath.Join(t.TempDir(), "cache")
				if c := nix.Copy("--to", "file://"+root+"?compression="+compression, closure.Top); c.Err != nil {
					t.Fatalf("filling the cache:\n%s", c)
				}
				secret, public := keygen(t, "e2e-"+compression+"-1")
				caddy := harness.StartCaddy(t, cacheCaddyfile(root, secret), harness.CaddyOptions{})

				substituteWhole(t, nix, caddy.URL(), public, closure, "substituting from the cache")

				_, otherPublic := keygen(t, "e2e-"+compression+"-1") // same name, other key
				c, _ := substitute(nix, caddy.URL(), otherPublic, closure.Top)
				if c.Err == nil || !strings.Contains(c.Output, "not signed by any of the keys in 'trusted-public-keys'") {
					t.Fatalf("substituting while trusting another key should fail with nix's signature error:\n%s", c)
				}

				c = nix.PathInfo("--store", caddy.URL(), "--recursive", closure.Top)
				if c.Err != nil || !slices.Equal(sortedFields(c.Stdout), closure.Paths) {
					t.Fatalf("nix path-info --store %s lists:\n%s\nwant %v", caddy.URL(), c, closure.Paths)
				}
			})
		}
	})
}

func TestTwoKeysAndClientSignatures(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildClosure("twokeys", 0)
		clientSecret := filepath.Join(t.TempDir(), "client.sec")
		clientPublicFile := filepath.Join(t.TempDir(), "client.pub")
		// A key made by nix itself, used here by the client that fills the cache.
		nix.Must("nix-store", "--generate-binary-cache-key", "client-1", clientSecret, clientPublicFile)
		root := filepath.Join(t.TempDir(), "cache")
		if c := nix.Copy("--to", "file://"+root+"?secret-key="+clientSecret, closure.Top); c.Err != nil {
			t.Fatalf("filling the cache:\n%s", c)
		}
		first, firstPublic := keygen(t, "first-1")
		second, secondPublic := keygen(t, "second-1")
		caddy := harness.StartCaddy(t, cacheCaddyfile(root, first, second), harness.CaddyOptions{})

		for _, key := range []string{firstPublic, secondPublic} {
			if c, _ := substitute(nix, caddy.URL(), key, closure.Top); c.Err != nil {
				t.Fatalf("trusting only %s:\n%s", key, c)
			}
		}
		clientPublic, _ := os.ReadFile(clientPublicFile)
		if c, _ := substitute(nix, caddy.URL(), strings.TrimSpace(string(clientPublic)), closure.Top); c.Err != nil {
			t.Fatalf("the client's own signature was not kept:\n%s", c)
		}

		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		body := get(t, caddy.URL()+"/"+hash+".narinfo", nil, http.StatusOK)
		for _, name := range []string{"client-1:", "first-1:", "second-1:"} {
			if n := strings.Count(body, "\nSig: "+name); n != 1 {
				t.Errorf("narinfo has %d signatures by %s, want 1:\n%s", n, name, body)
			}
		}
	})
}

func TestNixKeyWorksInHandler(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildClosure("nixkey", 0)
		root := filepath.Join(t.TempDir(), "cache")
		if c := nix.Copy("--to", "file://"+root, closure.Top); c.Err != nil {
			t.Fatalf("filling the cache:\n%s", c)
		}
		dir := t.TempDir()
		secret, public := filepath.Join(dir, "nix.sec"), filepath.Join(dir, "nix.pub")
		nix.Must("nix-store", "--generate-binary-cache-key", "made-by-nix-1", secret, public)
		if err := os.Chmod(secret, 0o600); err != nil {
			t.Fatal(err)
		}
		caddy := harness.StartCaddy(t, cacheCaddyfile(root, secret), harness.CaddyOptions{})
		publicKey, _ := os.ReadFile(public)
		if c, _ := substitute(nix, caddy.URL(), strings.TrimSpace(string(publicKey)), closure.Top); c.Err != nil {
			t.Fatalf("substituting with a key made by nix-store:\n%s", c)
		}
	})
}

func TestWorldReadableKeyIsRefused(t *testing.T) {
	secret, _ := keygen(t, "loose-1")
	if err := os.Chmod(secret, 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cacheCaddyfile(root, secret)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := harness.Run([]string{"CADDY_ADMIN=127.0.0.1:0", "CADDY_HTTP_PORT=1"}, "",
		harness.CaddyBinary(t, "caddy"), "validate", "--config", config, "--adapter", "caddyfile")
	if c.Err == nil || !strings.Contains(c.Output, "chmod 600") {
		t.Fatalf("caddy validate with a world-readable key should fail saying how to fix it:\n%s", c)
	}
}

func TestRangeHeadAndMisses(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildClosure("range", 64<<10)
		root := filepath.Join(t.TempDir(), "cache")
		if c := nix.Copy("--to", "file://"+root+"?compression=none&write-nar-listing=1", closure.Top); c.Err != nil {
			t.Fatalf("filling the cache:\n%s", c)
		}
		secret, _ := keygen(t, "range-1")
		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		drvLog := "log/" + hash + "-range-top.drv"
		if err := os.WriteFile(filepath.Join(root, drvLog), []byte("build log line\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		// The key file sits inside the cache root: it must still never be served.
		inRoot := filepath.Join(root, "cache.sec")
		data, _ := os.ReadFile(secret)
		if err := os.WriteFile(inRoot, data, 0o600); err != nil {
			t.Fatal(err)
		}
		caddy := harness.StartCaddy(t, cacheCaddyfile(root, inRoot), harness.CaddyOptions{})

		nar, whole := largestNar(t, root, 64<<10)
		narURL := caddy.URL() + "/nar/" + filepath.Base(nar)
		part := get(t, narURL, map[string]string{"Range": "bytes=100-1099"}, http.StatusPartialContent)
		if part != string(whole[100:1100]) {
			t.Fatalf("Range bytes=100-1099 returned %d bytes that differ from the file's", len(part))
		}
		full := get(t, narURL, nil, http.StatusOK)
		if full != string(whole) {
			t.Fatalf("GET returned %d bytes, the file has %d", len(full), len(whole))
		}
		first := do(t, http.MethodGet, narURL, nil)
		if etag := first.Header.Get("ETag"); etag == "" {
			t.Fatal("NAR response has no ETag")
		} else if again := do(t, http.MethodGet, narURL, map[string]string{"If-None-Match": etag}); again.StatusCode != http.StatusNotModified {
			t.Fatalf("conditional GET with the NAR's ETag: %s, want 304", again.Status)
		}
		if cc := first.Header.Get("Cache-Control"); !strings.Contains(cc, "immutable") {
			t.Fatalf("NAR Cache-Control %q is not immutable", cc)
		}
		if listing := get(t, caddy.URL()+"/"+hash+".ls", nil, http.StatusOK); !strings.Contains(listing, `"payload"`) {
			t.Fatalf(".ls listing does not list the payload file: %s", listing)
		}
		if logText := get(t, caddy.URL()+"/"+drvLog, nil, http.StatusOK); logText != "build log line\n" {
			t.Fatalf("build log: %q", logText)
		}

		for _, path := range []string{"/nix-cache-info", "/nar/" + filepath.Base(nar), "/"} {
			getResp := do(t, http.MethodGet, caddy.URL()+path, nil)
			headResp := do(t, http.MethodHead, caddy.URL()+path, nil)
			for _, h := range []string{"Content-Type", "Content-Length", "Cache-Control", "Last-Modified"} {
				if getResp.Header.Get(h) != headResp.Header.Get(h) || getResp.StatusCode != headResp.StatusCode {
					t.Errorf("HEAD %s: %s %s=%q, GET: %s %q", path, headResp.Status, h, headResp.Header.Get(h), getResp.Status, getResp.Header.Get(h))
				}
			}
		}

		missing := []string{
			"/cache.sec",
			"/00000000000000000000000000000000.narinfo",
			"/nar/0000000000000000000000000000000000000000000000000000.nar.xz",
			"/../cache.sec",
			"/nar/../cache.sec",
			"/nar/%2e%2e/cache.sec",
			"/%2e%2e/%2e%2e/etc/passwd",
			"/nar%2f..%2fcache.sec",
			"/nar/..%2fcache.sec",
			"/log/..%2f..%2fcache.sec",
			"/whatever",
		}
		for _, path := range missing {
			resp := do(t, http.MethodGet, caddy.URL()+path, nil)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: %s, want 404 Not Found", path, resp.Status)
			}
		}
	})
}

func sortedFields(s string) []string {
	f := strings.Fields(s)
	slices.Sort(f)
	return f
}

func do(t *testing.T, method, url string, headers map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// adminGet fetches path from caddy's admin endpoint, failing t unless it
// answers 200.
func adminGet(t *testing.T, caddy *harness.Caddy, path string) string {
	t.Helper()
	status, body := adminCall(t, caddy, http.MethodGet, path)
	if status != http.StatusOK {
		t.Fatalf("GET %s on the admin endpoint: %d: %s", path, status, body)
	}
	return body
}

// adminCall sends a request without a body to caddy's admin endpoint and
// returns the answer's status and body.
func adminCall(t *testing.T, caddy *harness.Caddy, method, path string) (int, string) {
	t.Helper()
	resp, err := caddy.AdminDo(method, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func get(t *testing.T, url string, headers map[string]string, wantStatus int) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %s, want %d: %s", url, resp.Status, wantStatus, body)
	}
	return string(body)
}

// TestPlantedSymlinkIsAMiss plants symlinks out of the cache root under a
// narinfo's and a realisation's name: each is a 404, as a miss is (a 503
// would make Nix give up on the whole cache for the rest of its command),
// the log warns once per file, and the rest of the cache substitutes.
func TestPlantedSymlinkIsAMiss(t *testing.T) {
	nix := harness.Nix28.New(t, "")
	closure := nix.BuildClosure("planted", 0)
	root := filepath.Join(t.TempDir(), "cache")
	if c := nix.Copy("--to", "file://"+root, closure.Top); c.Err != nil {
		t.Fatalf("filling the cache:\n%s", c)
	}
	planted := []string{
		strings.Repeat("1", 32) + ".narinfo",
		"realisations/sha256:" + strings.Repeat("ab", 32) + "!out.doi",
	}
	for _, name := range planted {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	secret, public := keygen(t, "planted-1")
	caddy := harness.StartCaddy(t, cacheCaddyfile(root, secret), harness.CaddyOptions{})
	for _, name := range planted {
		for range 3 {
			get(t, caddy.URL()+"/"+name, nil, http.StatusNotFound)
		}
	}
	if n := strings.Count(caddy.Log(), "not following a symlink out of the cache root"); n != len(planted) {
		t.Errorf("the log warns %d times of %d planted symlinks, want once each:\n%s", n, len(planted), caddy.Log())
	}
	substituteWhole(t, nix, caddy.URL(), public, closure, "substituting beside planted symlinks")
}
