package bench

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// closureSizes are the NAR sizes of a closure like a desktop application's:
// 300 paths, five large, 25 of a few MiB and 270 small; about 520 MiB.
func closureSizes() []int {
	sizes := make([]int, 300)
	for i := range sizes {
		switch {
		case i < 5:
			sizes[i] = (45 + i) << 20
		case i < 30:
			sizes[i] = (4 + i%5) << 20
		default:
			sizes[i] = (16 + i*37%1000) << 10
		}
	}
	return sizes
}

// presign stores what the nix_cache at cacheURL answers for each narinfo
// path under dir, for nginx and file_server to serve as files.
func presign(b *testing.B, cacheURL, dir string, paths []string) {
	b.Helper()
	presignWith(b, http.DefaultClient, cacheURL, dir, paths)
}

// presignWith is presign through client.
func presignWith(b *testing.B, client *http.Client, cacheURL, dir string, paths []string) {
	b.Helper()
	for _, p := range paths {
		resp, err := client.Get(cacheURL + p)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "\nSig: bench-1:") {
			b.Fatalf("nix_cache did not serve %s signed: %s %s", p, resp.Status, body)
		}
		if err := os.WriteFile(filepath.Join(dir, strings.TrimPrefix(p, "/")), body, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClosure serves one synthetic closure of 300 paths and about
// 520 MiB of zstd NARs in the method of the cache shootout: every narinfo
// in sequence over one keep-alive connection, and every NAR with 1, 4 and
// 16 connections. nginx and file_server serve pre-signed copies of the
// narinfos nix_cache signs on the fly, and the same NAR files.
func BenchmarkClosure(b *testing.B) {
	root := filepath.Join(b.TempDir(), "cache")
	presigned := filepath.Join(b.TempDir(), "presigned")
	if err := os.MkdirAll(presigned, 0o755); err != nil {
		b.Fatal(err)
	}
	var narinfos, nars []string
	var total int64
	for i, size := range closureSizes() {
		nar := writeRandomNar(b, root, size)
		nars = append(nars, nar)
		total += int64(size)
		h := make([]byte, 20)
		_, _ = rand.Read(h)
		hash := nixbase32.EncodeToString(h)
		fileHash := strings.TrimSuffix(strings.TrimPrefix(nar, "/nar/"), ".nar.zst")
		narinfo := fmt.Sprintf("StorePath: /nix/store/%s-closure-%d\nURL: %s\nCompression: zstd\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: %s-closure-%d\n",
			hash, i, strings.TrimPrefix(nar, "/"), fileHash, size, fileHash, size*2, hash, i)
		if err := os.WriteFile(filepath.Join(root, hash+".narinfo"), []byte(narinfo), 0o644); err != nil {
			b.Fatal(err)
		}
		narinfos = append(narinfos, "/"+hash+".narinfo")
	}
	if err := os.Symlink(filepath.Join(root, "nar"), filepath.Join(presigned, "nar")); err != nil {
		b.Fatal(err)
	}
	s := startServers(b, root, presigned)
	presign(b, s.urls["nix_cache"], presigned, narinfos)
	dur := time.Duration(envInt("BENCH_LOAD_SECONDS", 3)) * time.Second
	rounds := envInt("BENCH_ROUNDS", 5)

	sequence := newComparison(fmt.Sprintf("Closure of %d paths: every narinfo in sequence over one connection", len(narinfos)), "ms", "lower",
		"nix_cache at most 1.0x nginx")
	sequence.holds = ratioAtMost("nix_cache", "nginx", 1.0)
	sequence.notes = append(sequence.notes, loadNote+" The time is the closure's narinfos over the rate at which one connection fetched them, one after the other, for "+dur.String()+". "+
		"The ceiling answers every request with one signed narinfo from memory, as fast as anything inside Caddy's HTTP server can.")
	signed, err := os.ReadFile(filepath.Join(presigned, strings.TrimPrefix(narinfos[0], "/")))
	if err != nil {
		b.Fatal(err)
	}
	s.urls[ceiling] = startCeiling(b, signed)
	for round := range rounds {
		order := append(slices.Clone(contenders), ceiling)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, who := range order {
			r := load(b, s.urls[who], narinfos, 1, dur)
			sequence.add(who, float64(len(narinfos))/(float64(r.requests)/r.elapsed.Seconds())*1000)
		}
	}
	for _, conns := range []int{1, 4, 16} {
		c := newComparison(fmt.Sprintf("Closure of %d paths, %d MiB: every NAR, %d connection(s)", len(nars), total>>20, conns), "MiB/s", "higher",
			"nix_cache at least 1.0x nginx")
		c.holds = ratioAtLeast("nix_cache", "nginx", 1.0)
		c.notes = append(c.notes, loadNote)
		for round := range rounds {
			order := append(slices.Clone(contenders), chunkedNixCache)
			if round%2 == 1 {
				slices.Reverse(order)
			}
			for _, who := range order {
				r := load(b, s.urls[who], nars, conns, dur)
				c.add(who, float64(r.bytes)/(1<<20)/r.elapsed.Seconds())
			}
		}
		b.Logf("%s: nix_cache %.0f, nginx %.0f MiB/s", c.name, median(c.samples["nix_cache"]), median(c.samples["nginx"]))
	}
	b.Logf("%s: nix_cache %.1f ms, nginx %.1f ms", sequence.name, median(sequence.samples["nix_cache"]), median(sequence.samples["nginx"]))
}
