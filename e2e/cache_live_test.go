package e2e

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// liveCaddyfile serves the store storeDir, beside an empty cache root,
// signed by secret.
func liveCaddyfile(t *testing.T, root, secret, storeDir string, storeOptions ...string) string {
	t.Helper()
	store := "store " + storeDir
	if len(storeOptions) > 0 {
		store += " {\n\t" + strings.Join(storeOptions, "\n\t") + "\n}"
	}
	options := append(harness.CacheOptions(root, secret), store)
	return harness.Caddyfile{Cache: &harness.CacheSite{Options: options}}.String()
}

// narinfoField is the value of a narinfo's field.
func narinfoField(narinfo, key string) string {
	for line := range strings.SplitSeq(narinfo, "\n") {
		if value, ok := strings.CutPrefix(line, key+": "); ok {
			return value
		}
	}
	return ""
}

func hashOf(storePath string) string {
	return strings.SplitN(filepath.Base(storePath), "-", 2)[0]
}

// TestLiveStoreIsSubstituted builds a closure with each client into the
// client's own store and serves that store live: a fresh store substitutes
// the closure trusting only the cache's key, every NAR is byte for byte
// what `nix-store --dump` writes, and `nix store ls` reads the listings.
// The current client's store is kept in its root filesystem, so it is
// also a store served from another directory than /nix/store.
func TestLiveStoreIsSubstituted(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildFileKinds("live-" + client.Name)
		for _, compression := range []string{"none", "zstd"} {
			t.Run(compression, func(t *testing.T) {
				secret, public := keygen(t, "live-"+compression+"-1")
				root := filepath.Join(t.TempDir(), "cache")
				caddy := harness.StartCaddy(t, liveCaddyfile(t, root, secret, client.StoreDir(), "compression "+compression), harness.CaddyOptions{})

				store := substituteWhole(t, nix, caddy.URL(), public, closure, "substituting from the live store")
				if c := nix.Run("nix-store", "--store", store, "--verify-path", closure.Top); c.Err != nil {
					t.Fatalf("the substituted top path does not verify:\n%s", c)
				}
				if compression != "none" {
					return
				}
				for _, p := range closure.Paths {
					narinfo := get(t, caddy.URL()+"/"+hashOf(p)+".narinfo", nil, http.StatusOK)
					nar := get(t, caddy.URL()+"/"+narinfoField(narinfo, "URL"), nil, http.StatusOK)
					if dump := nix.Must("nix-store", "--dump", p); nar != dump {
						t.Errorf("NAR of %s (%d bytes) is not what nix-store --dump writes (%d bytes)", p, len(nar), len(dump))
					}
				}
				// nix store ls reads the generated listing.
				remote := nix.WithFreshCache().Run("nix", "store", "ls", "--store", caddy.URL(), "--recursive", "--long", closure.Top)
				local := nix.Must("nix", "store", "ls", "--recursive", "--long", closure.Top)
				if remote.Err != nil || remote.Stdout != local {
					t.Errorf("nix store ls over the live store:\n%s\nlocally:\n%s", remote, local)
				}
				if !strings.Contains(local, "run-link -> run") || !strings.Contains(local, "-r-xr-xr-x") {
					t.Errorf("the closure lacks the file kinds it was built with:\n%s", local)
				}
			})
		}
	})
}

// TestLiveStorePathCollectedWhileDownloading collects a path while a
// client downloads its NAR: the download fails short of its
// Content-Length, never a whole NAR of something else, and the path is
// then a miss.
func TestLiveStorePathCollectedWhileDownloading(t *testing.T) {
	nix := harness.Nix28.New(t, "")
	closure := nix.BuildClosure("live-gc", 96<<20)
	secret, _ := keygen(t, "live-gc-1")
	caddy := harness.StartCaddy(t, liveCaddyfile(t, filepath.Join(t.TempDir(), "cache"), secret, "/nix/store"), harness.CaddyOptions{})

	narinfo := get(t, caddy.URL()+"/"+hashOf(closure.Top)+".narinfo", nil, http.StatusOK)
	resp, err := http.Get(caddy.URL() + "/" + narinfoField(narinfo, "URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("NAR: %s", resp.Status)
	}
	body := bufio.NewReader(resp.Body)
	if _, err := io.CopyN(io.Discard, body, 1<<20); err != nil {
		t.Fatal(err)
	}
	// Nix's collector keeps a path a running process has a file of open
	// (it scans /proc), so it would wait for the file caddy is reading;
	// --ignore-liveness collects it anyway, as a collector that cannot see
	// caddy's processes (another mount or PID namespace) would.
	nix.Must("nix-store", "--delete", "--ignore-liveness", closure.Top)
	rest, err := io.Copy(io.Discard, body)
	got := (1 << 20) + rest
	if err == nil || got >= resp.ContentLength {
		t.Fatalf("the download of a collected path ended with %v after %d of %d bytes; want an error before the end", err, got, resp.ContentLength)
	}
	t.Logf("the download failed after %d of %d bytes: %v", got, resp.ContentLength, err)
	get(t, caddy.URL()+"/"+hashOf(closure.Top)+".narinfo", nil, http.StatusNotFound)
}

// TestLiveStoreAndCacheOnOneURL serves a cache directory and the live
// store on one URL: a client substitutes a closure only the cache holds
// and one only the store holds, and reads a build log Nix kept.
func TestLiveStoreAndCacheOnOneURL(t *testing.T) {
	nix := harness.Nix28.New(t, "")
	root := filepath.Join(t.TempDir(), "cache")
	cached := nix.BuildClosure("live-cached", 0)
	if c := nix.Copy("--to", "file://"+root+"?compression=zstd", cached.Top); c.Err != nil {
		t.Fatalf("filling the cache:\n%s", c)
	}
	// Reverse order: each path before those it refers to.
	nix.Must("nix-store", append([]string{"--delete"}, cached.Top, cached.Paths[0], cached.Paths[1], cached.Paths[2])...)
	built := nix.BuildClosure("live-built", 0)
	secret, public := keygen(t, "live-both-1")
	caddy := harness.StartCaddy(t, liveCaddyfile(t, root, secret, "/nix/store"), harness.CaddyOptions{})

	nix = nix.WithFreshCache()
	store := nix.ChrootStore()
	c := nix.Run("nix-store", "--store", store, "--realise", cached.Top, built.Top,
		"--option", "substituters", caddy.URL(),
		"--option", "trusted-public-keys", public)
	if c.Err != nil {
		t.Fatalf("substituting from the cache and the store on one URL:\n%s", c)
	}
	want := slices.Concat(cached.Paths, built.Paths)
	slices.Sort(want)
	if got := nix.StorePaths(store); !slices.Equal(got, want) {
		t.Fatalf("chroot store holds %v, want %v", got, want)
	}
	// The cache's own NAR for the cached path, the store's for the other.
	for p, want := range map[string]string{cached.Top: ".nar.zst", built.Top: "?hash=" + hashOf(built.Top)} {
		narinfo := get(t, caddy.URL()+"/"+hashOf(p)+".narinfo", nil, http.StatusOK)
		if url := narinfoField(narinfo, "URL"); !strings.HasSuffix(url, want) {
			t.Errorf("%s: URL %s, want one ending in %s", p, url, want)
		}
	}

	drv := strings.TrimSpace(nix.Must("nix-store", "--query", "--deriver", built.Top))
	log := get(t, caddy.URL()+"/log/"+filepath.Base(drv), nil, http.StatusOK)
	if want := "building live-built-top"; !strings.Contains(log, want) {
		t.Errorf("build log of %s: %q, want it to say %q", drv, log, want)
	}
}

// upstreamCaddyfile serves root, signed by secret, in front of the
// upstream at url trusted under key, with more upstream options.
func upstreamCaddyfile(root, secret, url, key string, options ...string) string {
	upstream := "upstream " + url + " {\n\ttrusted_public_key " + key
	for _, option := range options {
		upstream += "\n\t" + option
	}
	upstream += "\n}"
	return harness.Caddyfile{Cache: &harness.CacheSite{Options: append(harness.CacheOptions(root, secret), upstream)}}.String()
}

// TestUpstreamCacheBehindAnother has a second caddy play the upstream: a
// path only it holds substitutes through the first with the upstream's
// signature, and, kept there, again from the first alone once the
// upstream is gone, now under the first's own key.
func TestUpstreamCacheBehindAnother(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildClosure("upstream-"+client.Name, 2<<20)
		upRoot := filepath.Join(t.TempDir(), "upstream")
		if c := nix.Copy("--to", "file://"+upRoot+"?compression=xz", closure.Top); c.Err != nil {
			t.Fatalf("filling the upstream:\n%s", c)
		}
		upSecret, upPublic := keygen(t, "upstream-1")
		upstream := harness.StartCaddy(t, cacheCaddyfile(upRoot, upSecret), harness.CaddyOptions{})
		secret, public := keygen(t, "front-1")
		front := harness.StartCaddy(t, upstreamCaddyfile(filepath.Join(t.TempDir(), "front"), secret, upstream.URL(), upPublic, "keep"), harness.CaddyOptions{})

		// The front does not vouch for the upstream's paths.
		if c, _ := substitute(nix, front.URL(), public, closure.Top); c.Err == nil {
			t.Fatalf("a client trusting only the front's key substituted the upstream's paths:\n%s", c)
		}
		substituteWhole(t, nix, front.URL(), upPublic, closure, "substituting through the front, trusting the upstream's key")

		upstream.Stop()
		substituteWhole(t, nix, front.URL(), public, closure, "substituting kept paths from the front alone, trusting its key")

		// A client that holds the references already fetches only the
		// top path through the front, which fetches the rest itself.
		other := nix.BuildClosure("upstream-partly-"+client.Name, 1<<20)
		upRoot = filepath.Join(t.TempDir(), "upstream")
		if c := nix.Copy("--to", "file://"+upRoot+"?compression=xz", other.Top); c.Err != nil {
			t.Fatalf("filling the upstream:\n%s", c)
		}
		upstream = harness.StartCaddy(t, cacheCaddyfile(upRoot, upSecret), harness.CaddyOptions{})
		frontRoot := filepath.Join(t.TempDir(), "front")
		front = harness.StartCaddy(t, upstreamCaddyfile(frontRoot, secret, upstream.URL(), upPublic, "keep"), harness.CaddyOptions{})
		fresh := nix.WithFreshCache()
		store := fresh.ChrootStore()
		references := slices.DeleteFunc(slices.Clone(other.Paths), func(p string) bool { return p == other.Top })
		trust := []string{"--option", "trusted-public-keys", upPublic}
		if c := fresh.Run("nix-store", append(append([]string{"--store", store, "--realise", "--option", "substituters", upstream.URL()}, trust...), references...)...); c.Err != nil {
			t.Fatalf("substituting the references from the upstream:\n%s", c)
		}
		if c := fresh.Run("nix-store", append([]string{"--store", store, "--realise", other.Top, "--option", "substituters", front.URL()}, trust...)...); c.Err != nil {
			t.Fatalf("substituting the top path through the front:\n%s", c)
		}
		if err := harness.Eventually(30*time.Second, 100*time.Millisecond, func() error {
			for _, p := range other.Paths {
				if _, err := os.Stat(filepath.Join(frontRoot, hashOf(p)+".narinfo")); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("the front did not keep the whole closure: %v\n%s", err, front.Log())
		}
		upstream.Stop()
		substituteWhole(t, nix, front.URL(), public, other, "substituting a closure the front completed itself, trusting its key")
	})
}

// TestTamperedUpstreamNarinfoIsRefused changes a narinfo the upstream
// serves as stored, signed by the Nix that wrote it: the front answers
// it as missing, and says why in its log.
func TestTamperedUpstreamNarinfoIsRefused(t *testing.T) {
	nix := harness.Nix28.New(t, "")
	closure := nix.BuildClosure("upstream-tampered", 0)
	dir := t.TempDir()
	nixSecret, nixPublicFile := filepath.Join(dir, "nix.sec"), filepath.Join(dir, "nix.pub")
	nix.Must("nix-store", "--generate-binary-cache-key", "writer-1", nixSecret, nixPublicFile)
	upRoot := filepath.Join(dir, "upstream")
	if c := nix.Copy("--to", "file://"+upRoot+"?secret-key="+nixSecret, closure.Top); c.Err != nil {
		t.Fatalf("filling the upstream:\n%s", c)
	}
	upstream := harness.StartCaddy(t, cacheCaddyfile(upRoot), harness.CaddyOptions{})
	secret, _ := keygen(t, "front-1")
	writerKey := strings.TrimSpace(readFile(t, nixPublicFile))
	front := harness.StartCaddy(t, upstreamCaddyfile(filepath.Join(dir, "front"), secret, upstream.URL(), writerKey), harness.CaddyOptions{})

	narinfo := get(t, front.URL()+"/"+hashOf(closure.Paths[0])+".narinfo", nil, http.StatusOK)
	if !strings.Contains(narinfo, "Sig: writer-1:") {
		t.Fatalf("the upstream's signature was not kept:\n%s", narinfo)
	}
	// Still a narinfo the upstream serves, but not the one signed.
	file := filepath.Join(upRoot, hashOf(closure.Top)+".narinfo")
	tampered := strings.Replace(readFile(t, file), "NarSize: ", "NarSize: 1", 1)
	if err := os.WriteFile(file, []byte(tampered), 0o644); err != nil {
		t.Fatal(err)
	}
	get(t, upstream.URL()+"/"+hashOf(closure.Top)+".narinfo", nil, http.StatusOK)
	get(t, front.URL()+"/"+hashOf(closure.Top)+".narinfo", nil, http.StatusNotFound)
	if log := front.Log(); !strings.Contains(log, "no valid signature by a trusted key") {
		t.Errorf("the front's log does not say why the narinfo was refused:\n%s", log)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestUpstreamsNamingNarsOtherwiseAreKept puts the front cache before
// upstreams whose NAR URLs are not `nix copy`'s: a live store, whose URLs
// carry the store path's hash in a query (and, compressed as it serves,
// have no FileHash), and a static cache whose NARs are named by their NAR
// hash, served by Caddy's file_server. The front keeps each closure whole,
// under names of its own layout, and serves it alone once the upstream is
// gone.
func TestUpstreamsNamingNarsOtherwiseAreKept(t *testing.T) {
	nix := harness.Nix28.New(t, "")
	upSecret, upPublic := keygen(t, "named-upstream-1")
	secret, public := keygen(t, "named-front-1")
	publicFile := filepath.Join(t.TempDir(), "front.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	upstreams := map[string]func(t *testing.T, closure harness.Closure) string{
		"live store, none": func(t *testing.T, _ harness.Closure) string {
			return liveCaddyfile(t, filepath.Join(t.TempDir(), "empty"), upSecret, "/nix/store", "compression none")
		},
		"live store, zstd": func(t *testing.T, _ harness.Closure) string {
			return liveCaddyfile(t, filepath.Join(t.TempDir(), "empty"), upSecret, "/nix/store", "compression zstd")
		},
		"nar hash names": func(t *testing.T, closure harness.Closure) string {
			root := filepath.Join(t.TempDir(), "static")
			if c := nix.Copy("--to", "file://"+root+"?compression=xz&secret-key="+upSecret, closure.Top); c.Err != nil {
				t.Fatalf("filling the upstream:\n%s", c)
			}
			renameNarsByNarHash(t, root)
			return harness.Caddyfile{Sites: []string{"http://127.0.0.1:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n\troot * " + root + "\n\tfile_server\n}"}}.String()
		},
	}
	for name, upstreamCaddyfile := range upstreams {
		t.Run(name, func(t *testing.T) {
			closure := nix.BuildClosure("named-upstream", 256<<10)
			upstream := harness.StartCaddy(t, upstreamCaddyfile(t, closure), harness.CaddyOptions{})
			frontRoot := filepath.Join(t.TempDir(), "front")
			front := harness.StartCaddy(t, upstreamCaddyfileKeep(frontRoot, secret, upstream.URL(), upPublic), harness.CaddyOptions{})
			substituteWhole(t, nix, front.URL(), upPublic, closure, "substituting through the front")
			if err := harness.Eventually(30*time.Second, 100*time.Millisecond, func() error {
				for _, p := range closure.Paths {
					if _, err := os.Stat(filepath.Join(frontRoot, hashOf(p)+".narinfo")); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatalf("the front did not keep the closure: %v\n%s", err, front.Log())
			}
			for _, p := range closure.Paths {
				narinfo, _ := os.ReadFile(filepath.Join(frontRoot, hashOf(p)+".narinfo"))
				url := narinfoField(string(narinfo), "URL")
				if want := "nar/" + strings.TrimPrefix(narinfoField(string(narinfo), "FileHash"), "sha256:") + ".nar"; !strings.HasPrefix(url, want) || strings.Contains(url, "?") {
					t.Errorf("%s kept with URL %s, want %s[.ext]", p, url, want)
				}
			}
			upstream.Stop()
			substituteWhole(t, nix, front.URL(), public, closure, "substituting kept paths from the front alone")
			verifyClean(t, frontRoot, publicFile)
		})
	}
}

// upstreamCaddyfileKeep is upstreamCaddyfile with keep.
func upstreamCaddyfileKeep(root, secret, url, key string) string {
	return upstreamCaddyfile(root, secret, url, key, "keep")
}

// renameNarsByNarHash renames the NARs of the file:// cache in root after
// their NAR hash, as harmonia names them, and points the narinfos at the
// new names; the signatures do not cover the URL, so they stay valid.
func renameNarsByNarHash(t *testing.T, root string) {
	t.Helper()
	narinfos, _ := filepath.Glob(filepath.Join(root, "*.narinfo"))
	if len(narinfos) == 0 {
		t.Fatalf("no narinfo in %s", root)
	}
	for _, file := range narinfos {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		url := narinfoField(text, "URL")
		ext := url[strings.Index(url, ".nar"):]
		renamed := "nar/" + strings.TrimPrefix(narinfoField(text, "NarHash"), "sha256:") + ext
		if err := os.Rename(filepath.Join(root, url), filepath.Join(root, renamed)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(strings.Replace(text, "URL: "+url+"\n", "URL: "+renamed+"\n", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
