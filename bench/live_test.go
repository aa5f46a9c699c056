package bench

import (
	"fmt"
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

// libraryBlob writes up to size bytes of the host's shared libraries into
// one file: payload that compresses as real store paths do.
func libraryBlob(b *testing.B, size int64) string {
	b.Helper()
	blob := filepath.Join(b.TempDir(), "libraries")
	out, err := os.Create(blob)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	var written int64
	_ = filepath.WalkDir("/usr/lib", func(p string, d os.DirEntry, err error) error {
		if err != nil || written >= size || !d.Type().IsRegular() || !strings.Contains(d.Name(), ".so") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		n, _ := io.Copy(out, io.LimitReader(f, size-written))
		written += n
		return nil
	})
	if written < size/2 {
		b.Fatalf("found only %d bytes of shared libraries under /usr/lib for the payload", written)
	}
	return blob
}

// narURLs fetches every narinfo from base and returns the NAR URLs they
// name, as paths below base.
func narURLs(b *testing.B, base string, narinfos []string) []string {
	b.Helper()
	return narURLsWith(b, http.DefaultClient, base, narinfos)
}

// narURLsWith is narURLs through client.
func narURLsWith(b *testing.B, client *http.Client, base string, narinfos []string) []string {
	b.Helper()
	var urls []string
	for _, p := range narinfos {
		resp, err := client.Get(base + p)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s%s: %s", base, p, resp.Status)
		}
		for line := range strings.Lines(string(body)) {
			if url, ok := strings.CutPrefix(strings.TrimSpace(line), "URL: "); ok {
				urls = append(urls, "/"+url)
			}
		}
	}
	if len(urls) != len(narinfos) {
		b.Fatalf("%d narinfos named %d NARs", len(narinfos), len(urls))
	}
	return urls
}

const (
	liveNone = "nix_cache live store"
	liveZstd = "nix_cache live store, zstd on the fly"
	dirCache = "nix_cache, file:// copy (zstd)"
	nginxDir = "nginx, file:// copy (zstd)"
)

// BenchmarkLiveStore serves a closure built into the host's store, as it
// is, with nix_cache's live store (NARs made from the files, plain and
// compressed with zstd on the fly), against the same closure copied with
// `nix copy --to file://` (zstd) and served by nix_cache and by nginx
// with pre-signed narinfo. It measures narinfo and whole-closure
// download, and the copy that the live store saves.
func BenchmarkLiveStore(b *testing.B) {
	tops := envInt("BENCH_CLOSURE_TOPS", 100)
	builder := harness.NewNix(b, "")
	blob := libraryBlob(b, 64<<20)
	topPaths, base := builder.BuildSharedClosuresFrom("live-bench", tops, 2<<20, blob)
	closure := strings.Fields(builder.Must("nix-store", append([]string{"--query", "--requisites", base}, topPaths...)...))
	var narinfos []string
	for _, p := range closure {
		narinfos = append(narinfos, "/"+strings.SplitN(filepath.Base(p), "-", 2)[0]+".narinfo")
	}
	rounds := envInt("BENCH_ROUNDS", 5)

	// What a user does without a live store: copy, then serve.
	copyCmp := newComparison(fmt.Sprintf("Closure of %d paths: made servable", len(closure)), "s", "lower", "")
	copyCmp.notes = append(copyCmp.notes, "The live store serves the paths as they are; otherwise `nix copy --to file://DIR?compression=zstd` of the closure into a fresh directory comes first. Timed for each round.")
	var root string
	for range rounds {
		root = filepath.Join(b.TempDir(), "cache")
		start := time.Now()
		if c := builder.Copy(append([]string{"--to", "file://" + root + "?compression=zstd"}, topPaths...)...); c.Err != nil {
			b.Fatalf("nix copy --to file://:\n%s", c)
		}
		copyCmp.add("nix copy --to file:// (zstd)", time.Since(start).Seconds())
		copyCmp.add(liveNone, 0)
	}
	presigned := filepath.Join(b.TempDir(), "presigned")
	if err := os.MkdirAll(presigned, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "nar"), filepath.Join(presigned, "nar")); err != nil {
		b.Fatal(err)
	}
	s := startServers(b, root, presigned)
	presign(b, s.urls["nix_cache"], presigned, narinfos)
	secret, _ := harness.TempKeygen(b, "bench-1")
	zstdPort := harness.FreePort(b)
	live := harness.StartCaddy(b, harness.Caddyfile{
		Cache: &harness.CacheSite{Options: []string{"secret_key_file " + secret, "store /nix/store"}},
		Sites: []string{fmt.Sprintf("http://:%d {\n\tbind 127.0.0.1\n\tnix_cache {\n\t\tsecret_key_file %s\n\t\tstore /nix/store {\n\t\t\tcompression zstd\n\t\t}\n\t}\n}", zstdPort, secret)},
	}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})
	urls := map[string]string{
		liveNone: live.URL(),
		liveZstd: fmt.Sprintf("http://127.0.0.1:%d", zstdPort),
		dirCache: s.urls["nix_cache"],
		nginxDir: s.urls["nginx"],
	}
	nars := map[string][]string{}
	for who, u := range urls {
		nars[who] = narURLs(b, u, narinfos)
	}
	order := []string{liveNone, liveZstd, dirCache, nginxDir}
	dur := time.Duration(envInt("BENCH_LOAD_SECONDS", 3)) * time.Second

	narinfoCmp := newComparison(fmt.Sprintf("Live store: narinfo of a %d-path closure, 16 connections", len(closure)), "req/s", "higher",
		"the live store at least 0.8x the file:// copy served by nix_cache")
	narinfoCmp.holds = ratioAtLeast(liveNone, dirCache, 0.8)
	narinfoCmp.notes = append(narinfoCmp.notes, loadNote+" The live store keeps each path's lookup and signed narinfo in memory while the Nix database is unchanged: "+
		"it watches the database's files with inotify and asks the database for its data_version only after they were written; the directory cache keeps signed narinfos while inotify reports their files unchanged.")
	for round := range rounds {
		for _, who := range roundOrder([]string{liveNone, dirCache, nginxDir}, round) {
			r := load(b, urls[who], narinfos, 16, dur)
			narinfoCmp.add(who, float64(r.requests)/r.elapsed.Seconds())
		}
	}

	first := map[int]*comparison{}
	for _, conns := range []int{1, 16} {
		c := newComparison(fmt.Sprintf("Live store: the closure's %d NARs, %d connection(s)", len(closure), conns), "s per closure", "lower", "")
		c.notes = append(c.notes, loadNote+" Every NAR of the closure is requested in turn for "+dur.String()+"; the time is the closure's NAR count over the request rate. "+
			"The copy's NARs are zstd files the kernel sends; the live store makes each NAR from the store's files (hashing a path's the first time, then by size with sendfile), uncompressed, about 2.5 times their bytes, "+
			"or compressed on the fly by the server's one CPU, at what klauspost/compress's fastest level manages (about 130 MB/s of these NARs on this CPU). "+
			"Loopback makes bytes free: over a 1 Gbit/s link (about 119 MB/s) the uncompressed live store sends a closure in about as long as its NAR bytes take, and the copy in 0.4 of that.")
		first[conns] = c
		for round := range rounds {
			for _, who := range roundOrder(order, round) {
				r := load(b, urls[who], nars[who], conns, dur)
				c.add(who, float64(len(closure))/(float64(r.requests)/r.elapsed.Seconds()))
			}
		}
		b.Logf("%s: live %.2f s, live zstd %.2f s, nginx %.2f s", c.name, median(c.samples[liveNone]), median(c.samples[liveZstd]), median(c.samples[nginxDir]))
	}

	// The first download a user waits for, copy included.
	total := newComparison(fmt.Sprintf("Live store: from a built closure to its %d NARs downloaded, 16 connections", len(closure)), "s", "lower",
		"the live store sooner than copying and serving with nginx")
	total.holds = ratioAtMost(liveNone, "nix copy --to file://, then nginx", 1.0)
	total.notes = append(total.notes, "The sum, round by round, of the two tables above: the copy (none for the live store) and one closure's download with 16 connections.")
	for round := range rounds {
		total.add(liveNone, first[16].samples[liveNone][round])
		total.add(liveZstd, first[16].samples[liveZstd][round])
		total.add("nix copy --to file://, then nginx", copyCmp.samples["nix copy --to file:// (zstd)"][round]+first[16].samples[nginxDir][round])
	}
}

// roundOrder alternates the order of the contenders from round to round.
func roundOrder(who []string, round int) []string {
	order := slices.Clone(who)
	if round%2 == 1 {
		slices.Reverse(order)
	}
	return order
}
