package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// substitutable is a closure copied with `nix copy --to file://` (zstd):
// its top paths, the copy, a directory of narinfos that nix_cache signs
// beside the copy's NARs, and the narinfos' URL paths.
type substitutable struct {
	tops      []string
	root      string
	presigned string
	narinfos  []string
}

// newSubstitutable builds a closure of BENCH_CLOSURE_TOPS (100) top paths,
// each with a leaf of its own and a base they share, with 800 KiB of
// payload each, and copies it into a fresh directory.
func newSubstitutable(b *testing.B) *substitutable {
	b.Helper()
	builder := harness.NewNix(b, "")
	tops, _ := builder.BuildSharedClosures("substitute", envInt("BENCH_CLOSURE_TOPS", 100), 800<<10)
	root := filepath.Join(b.TempDir(), "cache")
	if c := builder.Copy(append([]string{"--to", "file://" + root + "?compression=zstd"}, tops...)...); c.Err != nil {
		b.Fatalf("nix copy --to file://:\n%s", c)
	}
	files, err := filepath.Glob(filepath.Join(root, "*.narinfo"))
	if err != nil || len(files) == 0 {
		b.Fatalf("nix copy wrote no narinfo to %s: %v", root, err)
	}
	presigned := filepath.Join(b.TempDir(), "presigned")
	if err := os.MkdirAll(presigned, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "nar"), filepath.Join(presigned, "nar")); err != nil {
		b.Fatal(err)
	}
	info, err := os.ReadFile(filepath.Join(root, "nix-cache-info"))
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(presigned, "nix-cache-info"), info, 0o644); err != nil {
		b.Fatal(err)
	}
	var narinfos []string
	for _, n := range files {
		narinfos = append(narinfos, "/"+filepath.Base(n))
	}
	return &substitutable{tops: tops, root: root, presigned: presigned, narinfos: narinfos}
}

// substitute has a fresh store and narinfo cache of nix substitute every
// top path from the cache at url, trusting publicKey, with more options,
// and returns how long it took.
func (s *substitutable) substitute(b *testing.B, nix *harness.Nix, url, publicKey string, options ...string) time.Duration {
	b.Helper()
	nix = nix.WithFreshCache()
	store := nix.ChrootStore()
	args := append([]string{"--store", store, "--realise", "--option", "substituters", url, "--option", "trusted-public-keys", publicKey}, options...)
	start := time.Now()
	run := nix.Run("nix-store", append(args, s.tops...)...)
	elapsed := time.Since(start)
	if run.Err != nil {
		b.Fatalf("substituting from %s:\n%s", url, run)
	}
	if got := strings.Count(nix.Must("nix", "path-info", "--store", store, "--all"), "\n"); got != len(s.narinfos) {
		b.Fatalf("substituting from %s put %d paths in the store, want %d", url, got, len(s.narinfos))
	}
	return elapsed
}

// BenchmarkNixSubstitutes measures what a user feels: a current Nix client
// (the harness's sid root) substitutes a whole closure (newSubstitutable),
// zstd, into a fresh store with a fresh narinfo cache, from nix_cache and
// from nginx and file_server serving the same NARs with pre-signed
// narinfo, alternating.
func BenchmarkNixSubstitutes(b *testing.B) {
	sub := newSubstitutable(b)
	s := startServers(b, sub.root, sub.presigned)
	presign(b, s.urls["nix_cache"], sub.presigned, sub.narinfos)

	consumer := harness.NixCurrent().New(b, "")
	c := newComparison(fmt.Sprintf("Nix (current) substitutes a closure of %d paths, zstd, into a fresh store", len(sub.narinfos)), "s", "lower",
		"nix_cache no slower than nginx")
	c.holds = ratioAtMost("nix_cache", "nginx", 1.0)
	c.notes = append(c.notes, "Each round, for each server: a fresh chroot store and a fresh narinfo cache, `nix-store --realise` of every top path with that server as the only substituter. "+
		"nginx and file_server serve narinfo that nix_cache signed beforehand; the servers run on one CPU, Nix wherever it likes.")
	for round := range envInt("BENCH_ROUNDS", 5) {
		for _, who := range roundOrder(contenders, round) {
			c.add(who, sub.substitute(b, consumer, s.urls[who], s.publicKey).Seconds())
		}
	}
	b.Logf("%s: nix_cache %.2f s, nginx %.2f s, file_server %.2f s", c.name,
		median(c.samples["nix_cache"]), median(c.samples["nginx"]), median(c.samples["file_server"]))
}
