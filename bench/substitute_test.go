package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// BenchmarkNixSubstitutes measures what a user feels: a current Nix client
// (the harness's sid root) substitutes a whole closure of BENCH_CLOSURE_TOPS
// (100) top paths, each with a leaf of its own and a base they share, with
// 800 KiB of payload each, zstd, into a fresh store with a fresh narinfo
// cache, from nix_cache and from nginx and file_server serving the same
// NARs with pre-signed narinfo, alternating.
func BenchmarkNixSubstitutes(b *testing.B) {
	builder := harness.NewNix(b, "")
	tops, _ := builder.BuildSharedClosures("substitute", envInt("BENCH_CLOSURE_TOPS", 100), 800<<10)
	root := filepath.Join(b.TempDir(), "cache")
	if c := builder.Copy(append([]string{"--to", "file://" + root + "?compression=zstd"}, tops...)...); c.Err != nil {
		b.Fatalf("nix copy --to file://:\n%s", c)
	}
	narinfos, err := filepath.Glob(filepath.Join(root, "*.narinfo"))
	if err != nil || len(narinfos) == 0 {
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
	s := startServers(b, root, presigned)
	var paths []string
	for _, n := range narinfos {
		paths = append(paths, "/"+filepath.Base(n))
	}
	presign(b, s.urls["nix_cache"], presigned, paths)

	consumer := harness.NixCurrent().New(b, "")
	c := newComparison(fmt.Sprintf("Nix (current) substitutes a closure of %d paths, zstd, into a fresh store", len(narinfos)), "s", "lower",
		"nix_cache no slower than nginx")
	c.holds = ratioAtMost("nix_cache", "nginx", 1.0)
	c.notes = append(c.notes, "Each round, for each server: a fresh chroot store and a fresh narinfo cache, `nix-store --realise` of every top path with that server as the only substituter. "+
		"nginx and file_server serve narinfo that nix_cache signed beforehand; the servers run on one CPU, Nix wherever it likes.")
	for round := range envInt("BENCH_ROUNDS", 5) {
		order := slices.Clone(contenders)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, who := range order {
			nix := consumer.WithFreshCache()
			store := nix.ChrootStore()
			start := time.Now()
			run := nix.Run("nix-store", append([]string{"--store", store, "--realise",
				"--option", "substituters", s.urls[who], "--option", "trusted-public-keys", s.publicKey}, tops...)...)
			elapsed := time.Since(start)
			if run.Err != nil {
				b.Fatalf("substituting from %s:\n%s", who, run)
			}
			if got := strings.Count(nix.Must("nix", "path-info", "--store", store, "--all"), "\n"); got != len(narinfos) {
				b.Fatalf("substituting from %s put %d paths in the store, want %d", who, got, len(narinfos))
			}
			c.add(who, elapsed.Seconds())
		}
	}
	b.Logf("%s: nix_cache %.2f s, nginx %.2f s, file_server %.2f s", c.name,
		median(c.samples["nix_cache"]), median(c.samples["nginx"]), median(c.samples["file_server"]))
}
