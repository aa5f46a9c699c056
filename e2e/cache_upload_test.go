package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

const uploadToken = "e2e-upload-token-0123456789abcdef"

// uploadCaddyfile serves root signed by key, with uploads authenticated by
// uploadToken, and more lines in the upload block.
func uploadCaddyfile(root, key string, uploadOptions ...string) string {
	return harness.UploadCache(root, key, uploadToken, uploadOptions...).String()
}

// startUploadCache starts a caddy serving a new cache, signed with a key
// called keyName, that takes uploads with uploadToken, and returns a Nix of
// client that presents the token, the caddy, the cache's root and its
// public key.
func startUploadCache(t *testing.T, client harness.NixClient, keyName string) (*harness.Nix, *harness.Caddy, string, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, keyName)
	caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})
	return client.Netrc(t, uploadToken), caddy, root, public
}

// verifyClean runs `caddy nix-cache verify` with NarHash checks and fails
// the test unless it reports a clean cache.
func verifyClean(t *testing.T, root, publicKeyFile string) string {
	t.Helper()
	return verifyCleanAt(t, nil, publicKeyFile, "--root", root)
}

// verifyCleanAt is verifyClean for the cache that the flags where name
// (--root or --s3), with env added to the command's environment.
func verifyCleanAt(t *testing.T, env []string, publicKeyFile string, where ...string) string {
	t.Helper()
	args := append(append([]string{"nix-cache", "verify"}, where...), "--public-key", publicKeyFile, "--nar-hash")
	c := harness.Run(env, "", harness.CaddyBinary(t, "caddy"), args...)
	if c.Err != nil || !strings.Contains(c.Stdout, " 0 problems") {
		t.Fatalf("caddy nix-cache verify %s is not clean:\n%s", where[0], c)
	}
	return c.Stdout
}

func TestNixCopyUploads(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix, caddy, root, public := startUploadCache(t, client, "upload-1")

		for _, query := range []string{"", "?compression=zstd", "?compression=none", "?compression=br"} {
			closure := nix.BuildClosure("upload", 1<<20)
			if c := nix.Copy("--to", caddy.URL()+"/"+query, closure.Top); c.Err != nil {
				t.Fatalf("nix copy --to %s/%s:\n%s", caddy.URL(), query, c)
			}
			substituteWhole(t, nix, caddy.URL(), public, closure, "substituting what was uploaded")
		}
		// The public landing page says when, not who.
		landing := get(t, caddy.URL()+"/", nil, http.StatusOK)
		if !regexp.MustCompile(`\nlast push: 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC\n`).MatchString(landing) || strings.Contains(landing, "token") {
			t.Errorf("after uploads the landing page reads:\n%s", landing)
		}
		nars, _ := filepath.Glob(filepath.Join(root, "nar", "*"))
		for _, ext := range []string{".nar.xz", ".nar.zst", ".nar", ".nar.br"} {
			if !slices.ContainsFunc(nars, func(n string) bool { return strings.HasSuffix(n, ext) }) {
				t.Fatalf("expected xz, zstd, brotli and uncompressed NARs, got %v", nars)
			}
		}
		publicFile := filepath.Join(t.TempDir(), "cache.pub")
		os.WriteFile(publicFile, []byte(public+"\n"), 0o644)
		verifyClean(t, root, publicFile)

		// Listings and build logs, as nix uploads them.
		closure := nix.BuildClosure("listing", 0)
		if c := nix.Copy("--to", caddy.URL()+"/?write-nar-listing=1", closure.Top); c.Err != nil {
			t.Fatalf("nix copy with write-nar-listing:\n%s", c)
		}
		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		if listing := get(t, caddy.URL()+"/"+hash+".ls", nil, 200); !strings.Contains(listing, `"references"`) {
			t.Fatalf("uploaded listing does not list the top path's files: %s", listing)
		}
		if ls := nix.Must("nix", "store", "ls", "--store", caddy.URL(), "--option", "trusted-public-keys", public, closure.Top+"/"); !strings.Contains(ls, "references") {
			t.Fatalf("nix store ls --store %s:\n%s", caddy.URL(), ls)
		}
		drv := strings.TrimSpace(nix.Must("nix-store", "--query", "--deriver", closure.Top))
		if c := nix.Run("nix", "store", "copy-log", "--to", caddy.URL()+"/", drv); c.Err != nil {
			t.Fatalf("nix store copy-log:\n%s", c)
		}
		localLog := nix.Must("nix-store", "--read-log", drv)
		if served := get(t, caddy.URL()+"/log/"+filepath.Base(drv), nil, 200); served != localLog {
			t.Fatalf("served build log %q, nix has %q", served, localLog)
		}
		if log := nix.Must("nix", "log", "--store", caddy.URL(), closure.Top); log != localLog {
			t.Fatalf("nix log --store %s: %q, want %q", caddy.URL(), log, localLog)
		}

		// What the handler stored is a file:// cache that nix reads back.
		closure = nix.BuildClosure("readback", 0)
		if c := nix.Copy("--to", caddy.URL()+"/", closure.Top); c.Err != nil {
			t.Fatalf("nix copy:\n%s", c)
		}
		store := nix.ChrootStore()
		if c := nix.Copy("--from", "file://"+root, "--to", store, "--no-check-sigs", closure.Top); c.Err != nil {
			t.Fatalf("nix copy --from file://%s:\n%s", root, c)
		}
	})
}

func TestUploadNeedsValidToken(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		root := filepath.Join(t.TempDir(), "cache")
		secret, _ := keygen(t, "auth-1")
		caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})
		before := listTree(t, root)

		for name, nix := range map[string]*harness.Nix{
			"no credentials": client.New(t, ""),
			"wrong token":    client.Netrc(t, "not-the-token-0123456789abcdef"),
		} {
			closure := nix.BuildClosure("auth", 0)
			c := nix.Copy("--to", caddy.URL()+"/", closure.Top)
			if c.Err == nil || !strings.Contains(c.Output, "401") {
				t.Errorf("%s: nix copy should fail with 401:\n%s", name, c)
			}
		}
		if after := listTree(t, root); !slices.Equal(before, after) {
			t.Fatalf("a refused upload wrote to the cache: before %v, after %v", before, after)
		}
	})
}

func TestConcurrentUploadsOfOverlappingClosures(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix, caddy, root, public := startUploadCache(t, client, "concurrent-1")

		// The copies send the top and the middle paths of two closures: the
		// middle's closure is part of the top's, so every path is raced by
		// several uploaders, each a separate client with its own lookup cache.
		a, b := nix.BuildClosure("concurrent-a", 256<<10), nix.BuildClosure("concurrent-b", 256<<10)
		targets := []string{a.Top, middleOf(t, a), b.Top, middleOf(t, b)}
		var wg sync.WaitGroup
		results := make([]harness.Command, 8)
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				query := ""
				if i%2 == 1 {
					query = "?compression=zstd"
				}
				results[i] = nix.WithFreshCache().Copy("--to", caddy.URL()+"/"+query, targets[i%len(targets)])
			}()
		}
		wg.Wait()
		for i, c := range results {
			if c.Err != nil {
				t.Errorf("concurrent nix copy %d failed:\n%s", i, c)
			}
		}
		publicFile := filepath.Join(t.TempDir(), "cache.pub")
		os.WriteFile(publicFile, []byte(public+"\n"), 0o644)
		verifyClean(t, root, publicFile)
		for _, closure := range []harness.Closure{a, b} {
			if c, _ := substitute(nix, caddy.URL(), public, closure.Top); c.Err != nil {
				t.Fatalf("substituting %s:\n%s", closure.Top, c)
			}
		}
	})
}

// middleOf returns the closure's middle path, which the top refers to.
func middleOf(t *testing.T, c harness.Closure) string {
	t.Helper()
	for _, p := range c.Paths {
		if strings.HasSuffix(p, "-middle") {
			return p
		}
	}
	t.Fatalf("no middle path in %v", c.Paths)
	return ""
}

// listTree lists every file below root, sorted.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(path, root))
		}
		return nil
	})
	slices.Sort(files)
	return files
}

// TestUploaderSubstitutesWhatItUploaded uploads with nix copy to the
// cache's /upload URL and then, on the same machine (the same lookup
// cache), copies the closure from the cache's URL into a fresh store,
// trusting only the cache's key. Nix remembers the narinfo it uploaded,
// unsigned, under the URL it uploaded to, so this works only because the
// upload URL is not the substituter's.
func TestUploaderSubstitutesWhatItUploaded(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix, caddy, root, public := startUploadCache(t, client, "uploader-1")
		closure := nix.BuildClosure("uploader", 0)
		if c := nix.Copy("--to", caddy.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
			t.Fatalf("nix copy --to %s/upload:\n%s", caddy.URL(), c)
		}
		store := nix.ChrootStore()
		if c := nix.Copy("--from", caddy.URL(), "--to", store, "--option", "trusted-public-keys", public, closure.Top); c.Err != nil {
			t.Fatalf("the uploading machine cannot copy what it uploaded from the cache:\n%s", c)
		}
		if got := nix.StorePaths(store); !slices.Equal(got, closure.Paths) {
			t.Fatalf("copied %v, want %v", got, closure.Paths)
		}
		verifyClean(t, root, writePublicKey(t, public))
	})
}

// writePublicKey writes a public key to a file, for verify --public-key.
func writePublicKey(t *testing.T, public string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "cache.pub")
	if err := os.WriteFile(file, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestCurrentNixCompressedDocuments uses what current Nix sends and older
// ones do not: listings, narinfo and build logs with Content-Encoding br,
// as cache.nixos.org stores them, realisations of content-addressed
// derivations, and `nix store info`.
func TestCurrentNixCompressedDocuments(t *testing.T) {
	nix := harness.NixCurrent().Netrc(t, uploadToken)
	ca := harness.NixCurrent().New(t, "extra-experimental-features = ca-derivations\n")
	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, "current-1")
	caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})

	if c := nix.Run("nix", "store", "info", "--store", caddy.URL()); c.Err != nil || !strings.Contains(c.Output, "Store URL: "+caddy.URL()) {
		t.Fatalf("nix store info:\n%s", c)
	}

	closure := nix.BuildClosure("brotli", 0)
	upload := caddy.URL() + "/upload?compression=zstd&write-nar-listing=true&ls-compression=br&narinfo-compression=br"
	if c := nix.Copy("--to", upload, closure.Top); c.Err != nil {
		t.Fatalf("nix copy with brotli documents:\n%s", c)
	}
	hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
	if listing := get(t, caddy.URL()+"/"+hash+".ls", nil, 200); !strings.Contains(listing, `"references"`) {
		t.Fatalf("the brotli listing was not stored decoded: %q", listing)
	}
	if ls := nix.Must("nix", "store", "ls", "--store", caddy.URL(), "--option", "trusted-public-keys", public, closure.Top+"/"); !strings.Contains(ls, "references") {
		t.Fatalf("nix store ls:\n%s", ls)
	}
	drv := strings.TrimSpace(nix.Must("nix-store", "--query", "--deriver", closure.Top))
	if c := nix.Run("nix", "store", "copy-log", "--to", caddy.URL()+"/upload?log-compression=br", drv); c.Err != nil {
		t.Fatalf("nix store copy-log with log-compression=br:\n%s", c)
	}
	if log, local := nix.Must("nix", "log", "--store", caddy.URL(), drv), nix.Must("nix-store", "--read-log", drv); log != local {
		t.Fatalf("nix log from the cache: %q, want the build's log %q", log, local)
	}
	if c, _ := substitute(nix, caddy.URL(), public, closure.Top); c.Err != nil {
		t.Fatalf("substituting what was uploaded with brotli narinfo:\n%s", c)
	}

	// A content-addressed derivation: its realisation is uploaded too.
	expr := filepath.Join(t.TempDir(), "ca.nix")
	os.WriteFile(expr, []byte(`builtins.derivation {
  name = "ca-output";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo content-addressed `+hash+` > $out" ];
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
}
`), 0o644)
	caDrv := strings.TrimSpace(ca.Must("nix-instantiate", expr))
	ca.Must("nix-store", "--realise", caDrv)
	netrc := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(netrc, []byte("machine 127.0.0.1 login nix password "+uploadToken+"\n"), 0o600)
	if c := ca.Run("nix", "copy", "--option", "netrc-file", netrc, "--to", caddy.URL()+"/upload", caDrv+"^*"); c.Err != nil {
		t.Fatalf("nix copy of a content-addressed output:\n%s", c)
	}
	realisations, _ := filepath.Glob(filepath.Join(root, "realisations", "sha256:*!out.doi"))
	if len(realisations) != 1 {
		t.Fatalf("want one stored realisation, got %v", realisations)
	}
	if doi := get(t, caddy.URL()+"/realisations/"+filepath.Base(realisations[0]), nil, 200); !strings.Contains(doi, `"outPath"`) {
		t.Fatalf("served realisation: %s", doi)
	}
	verifyClean(t, root, writePublicKey(t, public))
}
