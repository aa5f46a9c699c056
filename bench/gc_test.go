package bench

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// syntheticGraph is the reference graph of a package repository's cache:
// a few thousand shared bases (compilers, libraries), each referencing a
// few earlier ones, and chains of 5 to 20 paths on top (a package's
// builds over time, or its outputs), each referencing the one before it
// and some bases. It returns every path's references, as indexes.
func syntheticGraph(n int, random *rand.Rand) [][]int {
	bases := min(3000, max(1, n/20))
	refs := make([][]int, n)
	for i := range bases {
		for range random.IntN(4) {
			if i > 0 {
				refs[i] = append(refs[i], random.IntN(i))
			}
		}
	}
	for i := bases; i < n; {
		length := 5 + random.IntN(16)
		for j := 0; j < length && i < n; j, i = j+1, i+1 {
			if j > 0 {
				refs[i] = append(refs[i], i-1)
			}
			for range 1 + random.IntN(5) {
				refs[i] = append(refs[i], random.IntN(bases))
			}
		}
	}
	return refs
}

// syntheticCache writes a cache of n paths with syntheticGraph's
// references and a NAR file of 1 to 4 KiB each, all two days old, and
// returns the bytes of NAR files it wrote and the hash parts of the
// narinfos.
func syntheticCache(b *testing.B, root string, n int) (int64, []string) {
	b.Helper()
	if err := os.MkdirAll(filepath.Join(root, "nar"), 0o755); err != nil {
		b.Fatal(err)
	}
	random := rand.New(rand.NewChaCha8([32]byte{'g', 'c'}))
	refs := syntheticGraph(n, random)
	names := make([]string, n)
	hashes := make([]string, n)
	narHashes := make([]string, n)
	sizes := make([]int, n)
	var total int64
	for i := range n {
		var digest [32]byte
		for j := range digest {
			digest[j] = byte(random.Uint32())
		}
		hashes[i] = nixbase32.EncodeToString(digest[:20])
		names[i] = fmt.Sprintf("%s-package-%d-1.%d", hashes[i], i%5000, i%17)
		narHashes[i] = nixbase32.EncodeToString(digest[:])
		sizes[i] = 1024 + random.IntN(3072)
		total += int64(sizes[i])
	}
	old := time.Now().Add(-48 * time.Hour)
	write := func(name string, data []byte) {
		path := filepath.Join(root, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Chtimes(path, old, old); err != nil {
			b.Fatal(err)
		}
	}
	const workers = 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			body := make([]byte, 4096)
			for i := range body {
				body[i] = byte(i*31 + w)
			}
			for i := w; i < n; i += workers {
				nar := "nar/" + narHashes[i] + ".nar.zst"
				write(nar, body[:sizes[i]])
				references := []string{names[i]}
				for _, r := range refs[i] {
					references = append(references, names[r])
				}
				narinfo := fmt.Sprintf("StorePath: /nix/store/%s\nURL: %s\nCompression: zstd\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: %s\nDeriver: %s.drv\n",
					names[i], nar, narHashes[i], sizes[i], narHashes[i], sizes[i]*3, strings.Join(references, " "), names[(i+1)%n])
				write(hashes[i]+".narinfo", []byte(narinfo))
			}
		})
	}
	wg.Wait()
	if err := os.Chtimes(filepath.Join(root, "nar"), old, old); err != nil {
		b.Fatal(err)
	}
	return total, hashes
}

// BenchmarkCollect measures `caddy nix-cache` over a synthetic cache of
// BENCH_GC_PATHS (1,000,000) paths: building the index from the files, a
// start-up reconcile, planning a collection, collecting half the cache
// and a collection with nothing to do, beside reading every narinfo once
// with cat (the least any indexing can cost) and rm of as many files as
// the collection deletes; the index's size; and narinfo requests under
// wrk while a collection runs in the serving caddy.
func BenchmarkCollect(b *testing.B) {
	caddy := harness.CaddyBinary(b, "caddy")
	n := envInt("BENCH_GC_PATHS", 1000000)
	root := filepath.Join(b.TempDir(), "cache")
	start := time.Now()
	narBytes, hashes := syntheticCache(b, root, n)
	b.Logf("wrote %d paths in %s", n, time.Since(start).Round(time.Second))
	indexFile := filepath.Join(b.TempDir(), "index.db")
	command := func(args ...string) []string {
		return append(append([]string{"nix-cache"}, args...), "--root", root, "--index", indexFile)
	}
	catAll := fmt.Sprintf("find %s -maxdepth 1 -name '*.narinfo' -print0 | xargs -0 cat > /dev/null", root)

	wall := newComparison(fmt.Sprintf("Index and collection, %d paths: wall time", n), "s", "lower", "gc to half the size within 1.5x of rm of the same files")
	wall.holds = ratioAtMost(gcHalf, rmHalf, 1.5)
	wall.notes = append(wall.notes, "Each run is a `caddy nix-cache` process on the cache directory (--root), so it includes opening the index and listing the directory. "+
		"The paths form a package repository's graph: 3,000 shared bases and chains of 5 to 20 paths on top, each referencing the one before and 1 to 5 bases. "+
		"reindex --full reads and parses every narinfo and writes the records that changed; the first row is the least that takes, cat of every narinfo. "+
		"reindex is what a start-up does: it brings the index in line with unchanged files (a listing and a stat per file), after compacting the index when it opens it, if its pages are mostly empty (in the first round, after the first reindex --full). "+
		"gc --dry-run does that, loads every record and plans; gc to half the size then deletes, and the row after it is the least that takes, rm of as many files in a copy of the cache; gc with nothing to do is a collection that finds nothing to delete.")
	within256 := func(m map[string]float64) bool {
		for _, v := range m {
			if v > 256 {
				return false
			}
		}
		return true
	}
	rss := newComparison(fmt.Sprintf("Index and collection, %d paths: peak resident memory", n), "MiB", "lower", "at most 256 MiB for each")
	rss.holds = within256
	rss.notes = append(rss.notes, "Peak resident memory (VmHWM, read every 10 ms) of each `caddy nix-cache` process. It counts the binary's pages the process ran (about 50 MiB) and the pages of the index file it has mapped at the time: bbolt maps the file, and the commands let go of the pages behind every 16 MiB a read maps and after every write transaction (madvise), so that they stay in the page cache only.")
	anon := newComparison(fmt.Sprintf("Index and collection, %d paths: peak anonymous memory", n), "MiB", "lower", "at most 256 MiB for each")
	anon.holds = within256
	anon.notes = append(anon.notes, "Peak anonymous memory (RssAnon, read every 10 ms) of each `caddy nix-cache` process: its heap and stacks, what it holds itself.")
	measure := func(contender string, args ...string) {
		r := timed(b, nil, caddy, command(args...)...)
		wall.add(contender, r.wall.Seconds())
		rss.add(contender, r.rss)
		anon.add(contender, r.anon)
	}
	// The floor: what the binary takes to run a command at all.
	empty := timed(b, nil, caddy, "nix-cache", "reindex", "--root", b.TempDir(), "--index", filepath.Join(b.TempDir(), "index.db"))
	rss.add("reindex of an empty cache", empty.rss)
	anon.add("reindex of an empty cache", empty.anon)
	maxSize := fmt.Sprint(narBytes / 2)
	for range envInt("BENCH_ROUNDS", 3) {
		wall.add("cat every narinfo", timed(b, nil, "sh", "-c", catAll).wall.Seconds())
		measure("reindex --full", "reindex", "--full")
		measure("reindex (at start-up)", "reindex")
		measure("gc --dry-run to half the size", "gc", "--dry-run", "--max-size", maxSize)
	}
	size := newComparison(fmt.Sprintf("Index and collection, %d paths: index size", n), "bytes per path", "lower", "at most 300 bytes per path")
	size.holds = func(m map[string]float64) bool { return m["index file"] <= 300 }
	size.notes = append(size.notes, "The index file's size after the rounds above, divided by the paths; beside it, the narinfo files' bytes, which the index replaces for retention.")
	size.add("index file", float64(fileSize(b, indexFile))/float64(n))
	size.add("narinfo files", float64(narinfoBytes(b, root))/float64(n))

	// A copy, to time rm of as many files as the collection deletes.
	copied := filepath.Join(b.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", root, copied).CombinedOutput(); err != nil {
		b.Fatalf("copying the cache: %v\n%s", err, out)
	}
	before := countNarinfos(b, root)
	measure(gcHalf, "gc", "--max-size", maxSize)
	deleted := before - countNarinfos(b, root)
	rm := timed(b, nil, "sh", "-c", fmt.Sprintf("cd %s && ls -f | grep narinfo | head -n %d | xargs rm && ls -f nar | grep nar | head -n %[2]d | sed s,^,nar/, | xargs rm", copied, deleted))
	wall.add(rmHalf, rm.wall.Seconds())
	wall.notes = append(wall.notes, fmt.Sprintf("gc to half the size deleted %d narinfos and as many NARs.", deleted))
	_ = os.RemoveAll(copied)
	measure("gc with nothing to do", "gc", "--max-size", maxSize)

	narinfoDuringCollection(b, root, indexFile, hashes, narBytes/4)
}

// The rows the goal compares.
const (
	gcHalf = "gc to half the size"
	rmHalf = "rm of as many narinfos and NARs"
)

// narinfoDuringCollection serves root with nix_cache and loads it with
// narinfo requests under wrk, alone and while the same caddy collects the
// cache down to maxSize through its admin API.
func narinfoDuringCollection(b *testing.B, root, indexFile string, hashes []string, maxSize int64) {
	b.Helper()
	secret, _ := harness.TempKeygen(b, "bench-1")
	caddy := harness.StartCaddy(b, harness.Caddyfile{
		Cache: &harness.CacheSite{Options: append(harness.CacheOptions(root, secret), "index_file "+indexFile)},
	}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})
	// A reindex waits for the index to open and for the reindex the
	// start began.
	if err := adminPost(caddy, "/nix-cache/reindex"); err != nil {
		b.Fatalf("reindexing through the admin API: %v", err)
	}
	// The narinfos served: they stay, as the collection deletes what was
	// used least recently.
	var paths []string
	for i := 0; i < len(hashes) && len(paths) < 2000; i += max(1, len(hashes)/4000) {
		if _, err := os.Stat(filepath.Join(root, hashes[i]+".narinfo")); err == nil {
			paths = append(paths, "/"+hashes[i]+".narinfo")
		}
	}
	const conns, window = 16, 2 * time.Second
	rate := newComparison("Narinfo while collecting", "req/s", "higher", "narinfo during a collection at least 0.8x narinfo without one")
	rate.holds = ratioAtLeast("during a collection", "without a collection", 0.8)
	rate.notes = append(rate.notes, loadNote+" nix_cache serves the cache left by the collection above, and wrk requests 2,000 narinfos that the collection keeps, over 16 connections in windows of "+window.String()+": five before, and then up to thirty while a collection to a quarter of the NAR bytes, started through the admin API, runs in the same caddy, which is then stopped. A collection in a serving caddy walks the storage and deletes at a quarter of one CPU at most.")
	warm := load(b, caddy.URL(), paths, conns, window)
	b.Logf("warm-up: %.0f req/s", float64(warm.requests)/warm.elapsed.Seconds())
	for range 5 {
		r := load(b, caddy.URL(), paths, conns, window)
		rate.add("without a collection", float64(r.requests)/r.elapsed.Seconds())
	}
	done := make(chan error, 1)
	started := time.Now()
	go func() { done <- adminPost(caddy, fmt.Sprintf("/nix-cache/gc?max_size=%d", maxSize)) }()
	for windows := 0; windows < 30; windows++ {
		r := load(b, caddy.URL(), paths, conns, window)
		select {
		case err := <-done:
			if err != nil {
				b.Fatalf("collecting through the admin API: %v", err)
			}
			if windows == 0 {
				b.Fatalf("the collection took %s, less than one window of wrk: use more paths (BENCH_GC_PATHS)", time.Since(started))
			}
			rate.notes = append(rate.notes, fmt.Sprintf("The collection took %s.", time.Since(started).Round(100*time.Millisecond)))
			return
		default:
			rate.add("during a collection", float64(r.requests)/r.elapsed.Seconds())
		}
	}
	// What is left of the collection does not matter here.
	caddy.Kill()
}

// adminPost runs an operation through caddy's admin API.
func adminPost(caddy *harness.Caddy, path string) error {
	resp, err := caddy.AdminDo("POST", path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	return nil
}

// fileSize is the size of the file at path.
func fileSize(b *testing.B, path string) int64 {
	b.Helper()
	info, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return info.Size()
}

// narinfoBytes sums the sizes of the narinfos in root.
func narinfoBytes(b *testing.B, root string) int64 {
	b.Helper()
	entries, err := os.ReadDir(root)
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".narinfo") {
			info, err := e.Info()
			if err != nil {
				b.Fatal(err)
			}
			total += info.Size()
		}
	}
	return total
}

// countNarinfos counts the narinfos in root.
func countNarinfos(b *testing.B, root string) int {
	b.Helper()
	f, err := os.Open(root)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		b.Fatal(err)
	}
	count := 0
	for _, name := range names {
		if strings.HasSuffix(name, ".narinfo") {
			count++
		}
	}
	return count
}
