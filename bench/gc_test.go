package bench

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// syntheticCache writes a cache of n paths, each referencing up to three
// earlier ones, with a NAR file of 1 to 4 KiB each, and returns the bytes
// of NAR files it wrote.
func syntheticCache(b *testing.B, root string, n int) int64 {
	b.Helper()
	if err := os.MkdirAll(filepath.Join(root, "nar"), 0o755); err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	var total int64
	random := make([]byte, 4096)
	for i := range n {
		h := make([]byte, 20)
		_, _ = rand.Read(h)
		names[i] = nixbase32.EncodeToString(h) + fmt.Sprintf("-gc-%d", i)
		refs := []string{names[i]}
		for r := range 3 {
			if i > 0 && (i+r)%2 == 0 {
				refs = append(refs, names[(i*7+r*13)%i])
			}
		}
		size := 1024 + i%3072
		_, _ = rand.Read(random[:size])
		fileHash := make([]byte, 32)
		_, _ = rand.Read(fileHash)
		nar := "nar/" + nixbase32.EncodeToString(fileHash) + ".nar.zst"
		if err := os.WriteFile(filepath.Join(root, nar), random[:size], 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(size)
		narinfo := fmt.Sprintf("StorePath: /nix/store/%s\nURL: %s\nCompression: zstd\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: %s\n",
			names[i], nar, nixbase32.EncodeToString(fileHash), size, nixbase32.EncodeToString(fileHash), size*2, strings.Join(refs, " "))
		if err := os.WriteFile(filepath.Join(root, names[i][:32]+".narinfo"), []byte(narinfo), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	// As old as a cache worth collecting.
	old := time.Now().Add(-48 * time.Hour)
	if err := filepath.Walk(root, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chtimes(path, old, old)
	}); err != nil {
		b.Fatal(err)
	}
	return total
}

// BenchmarkCollect measures `caddy nix-cache` over a synthetic cache of
// BENCH_GC_PATHS (100,000) paths: building the index from the files,
// planning a collection, collecting half the cache and a collection with
// nothing to do, beside reading every narinfo once with cat (the least any
// indexing can cost).
func BenchmarkCollect(b *testing.B) {
	caddy := harness.CaddyBinary(b, "caddy")
	n := envInt("BENCH_GC_PATHS", 100000)
	root := filepath.Join(b.TempDir(), "cache")
	narBytes := syntheticCache(b, root, n)
	env := []string{"XDG_DATA_HOME=" + b.TempDir()}
	catAll := fmt.Sprintf("find %s -maxdepth 1 -name '*.narinfo' -print0 | xargs -0 cat > /dev/null", root)

	wall := newComparison(fmt.Sprintf("Index and collection, %d paths: wall time", n), "s", "lower", "")
	wall.notes = append(wall.notes, "Each run is a `caddy nix-cache` process on the cache directory (--root), so it includes opening the index and listing the directory. "+
		"reindex --full reads and parses every narinfo and rewrites every record; the first row is the least that takes, cat of every narinfo. "+
		"gc --dry-run brings the index in line with the files (a listing and a stat per file), loads every record and plans; gc to half the size then deletes, and the row after it is the least that takes, rm of as many files in a copy of the cache; gc with nothing to do is a collection that finds nothing to delete.")
	rss := newComparison(fmt.Sprintf("Index and collection, %d paths: peak resident memory", n), "MiB", "lower", "")
	maxSize := fmt.Sprint(narBytes / 2)
	for range envInt("BENCH_ROUNDS", 3) {
		d, _ := timed(b, nil, "sh", "-c", catAll)
		wall.add("cat every narinfo", d.Seconds())
		d, m := timed(b, env, caddy, "nix-cache", "reindex", "--full", "--root", root)
		wall.add("reindex --full", d.Seconds())
		rss.add("reindex --full", m)
		d, m = timed(b, env, caddy, "nix-cache", "gc", "--dry-run", "--max-size", maxSize, "--root", root)
		wall.add("gc --dry-run to half the size", d.Seconds())
		rss.add("gc --dry-run to half the size", m)
	}
	// A copy, to time rm of as many files as the collection deletes.
	copied := filepath.Join(b.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", root, copied).CombinedOutput(); err != nil {
		b.Fatalf("copying the cache: %v\n%s", err, out)
	}
	before, _ := filepath.Glob(filepath.Join(root, "*.narinfo"))
	d, m := timed(b, env, caddy, "nix-cache", "gc", "--max-size", maxSize, "--root", root)
	wall.add("gc to half the size", d.Seconds())
	rss.add("gc to half the size", m)
	after, _ := filepath.Glob(filepath.Join(root, "*.narinfo"))
	deleted := len(before) - len(after)
	d, _ = timed(b, nil, "sh", "-c", fmt.Sprintf("cd %s && ls | grep narinfo | head -n %d | xargs rm && ls nar | head -n %[2]d | sed s,^,nar/, | xargs rm", copied, deleted))
	wall.add(fmt.Sprintf("rm of as many narinfos and NARs (%d each)", deleted), d.Seconds())
	d, m = timed(b, env, caddy, "nix-cache", "gc", "--max-size", maxSize, "--root", root)
	wall.add("gc with nothing to do", d.Seconds())
	rss.add("gc with nothing to do", m)
	narinfos, _ := filepath.Glob(filepath.Join(root, "*.narinfo"))
	b.Logf("%d paths, %d left after collecting to half the NAR bytes", n, len(narinfos))
}
