package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestFullDiskRefusesUploadsAndKeepsServing keeps a cache on a 24 MiB
// tmpfs: an upload that does not fit is refused with 507 and leaves no
// temporary file and no narinfo, the cache stays clean and goes on
// serving what it holds, and once a collection freed the space the same
// upload succeeds.
func TestFullDiskRefusesUploadsAndKeepsServing(t *testing.T) {
	root := harness.Tmpfs(t, "24m")
	secret, public := keygen(t, "full-disk-1")
	publicFile := filepath.Join(t.TempDir(), "cache.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)

	first := nix.BuildClosure("full-first", 10<<20)
	if c := nix.Copy("--to", caddy.URL()+"/upload?compression=none", first.Top); c.Err != nil {
		t.Fatalf("nix copy of the first closure:\n%s", c)
	}
	second := nix.BuildClosure("full-second", 16<<20)
	c := nix.Copy("--to", caddy.URL()+"/upload?compression=none", second.Top)
	if c.Err == nil || !strings.Contains(c.Output, "507") {
		t.Fatalf("nix copy of a closure that does not fit: want a failure with 507:\n%s", c)
	}
	if !strings.Contains(caddy.Log(), "the cache's storage is full") {
		t.Errorf("caddy's log does not say the storage is full:\n%s", caddy.Log())
	}
	var temporaries []string
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), dir.TempPrefix) {
			temporaries = append(temporaries, path)
		}
		return nil
	})
	if len(temporaries) > 0 {
		t.Fatalf("the refused upload left temporary files: %v", temporaries)
	}
	if _, err := os.Stat(filepath.Join(root, storeHash(second.Top)+".narinfo")); err == nil {
		t.Fatal("the path that did not fit has a narinfo")
	}
	verifyClean(t, root, publicFile)
	substituteWhole(t, nix, caddy.URL(), public, first, "substituting what the full cache holds")

	// The collection deletes everything, the second closure's small paths
	// too, which Nix remembers as pushed: it copies with a fresh cache.
	adminPost(t, caddy, "/nix-cache/gc?max_size=1&min_age=0s")
	if c := nix.WithFreshCache().Copy("--to", caddy.URL()+"/upload?compression=none", second.Top); c.Err != nil {
		t.Fatalf("nix copy after a collection freed the space:\n%s", c)
	}
	substituteWhole(t, nix, caddy.URL(), public, second, "substituting what was pushed after the collection")
	verifyClean(t, root, publicFile)
}

// storeHash is the hash part of a store path's name.
func storeHash(storePath string) string {
	hash, _, _ := strings.Cut(filepath.Base(storePath), "-")
	return hash
}
