package bench

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// servers are the three contenders serving one directory over loopback.
type servers struct {
	urls      map[string]string // contender → base URL
	admin     string            // nix_cache's caddy admin endpoint, for profiles
	publicKey string            // the key nix_cache signs with
}

// startServers serves root with nix_cache (signing with a fresh key),
// Caddy's file_server, and nginx (static files, sendfile), each on its own
// loopback port. presigned, if set, is what file_server and nginx serve
// instead of root (pre-signed narinfo copies).
func startServers(b *testing.B, root, presigned string) *servers {
	b.Helper()
	if presigned == "" {
		presigned = root
	}
	secret, public := harness.TempKeygen(b, "bench-1")
	filePort, chunkPort := harness.FreePort(b), harness.FreePort(b)
	caddy := harness.StartCaddy(b, harness.Caddyfile{
		Global: []string{fmt.Sprintf("servers 127.0.0.1:%d {\n\ttimeouts {\n\t\twrite_max_chunk 2MiB\n\t}\n}", chunkPort)},
		Cache:  &harness.CacheSite{Options: harness.CacheOptions(root, secret), Upload: []string{"token " + benchRefToken + " ref"}},
		Sites: []string{
			fmt.Sprintf("http://:%d {\n\tbind 127.0.0.1\n\tnix_cache {\n\t\troot %s\n\t\tsecret_key_file %s\n\t}\n}", chunkPort, root, secret),
			fmt.Sprintf("http://:%d {\n\tbind 127.0.0.1\n\tfile_server {\n\t\troot %s\n\t}\n}", filePort, presigned),
		},
	}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})

	_, nginxPort := startNginx(b, presigned, serverCPU)
	s := &servers{admin: caddy.Admin, publicKey: public, urls: map[string]string{
		"nix_cache":     caddy.URL(),
		"file_server":   fmt.Sprintf("http://127.0.0.1:%d", filePort),
		"nginx":         fmt.Sprintf("http://127.0.0.1:%d", nginxPort),
		chunkedNixCache: fmt.Sprintf("http://127.0.0.1:%d", chunkPort),
	}}
	for name, u := range s.urls {
		if err := harness.Eventually(10*time.Second, 50*time.Millisecond, func() error {
			resp, err := http.Get(u + "/nix-cache-info")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		}); err != nil {
			b.Fatalf("%s does not answer: %v", name, err)
		}
	}
	return s
}

// startBaseline starts, when BENCH_BASELINE_CADDY names a caddy built from
// an earlier commit, that caddy's nix_cache on root as the contender
// baselineNixCache, and reports whether it did.
func (s *servers) startBaseline(b *testing.B, root string) bool {
	b.Helper()
	baseline := os.Getenv("BENCH_BASELINE_CADDY")
	if baseline == "" {
		return false
	}
	secret, _ := harness.TempKeygen(b, "bench-1")
	old := harness.StartCaddy(b, harness.Caddyfile{Cache: &harness.CacheSite{Options: harness.CacheOptions(root, secret)}}.String(),
		harness.CaddyOptions{Binary: pinnedCaddy(b, baseline)})
	s.urls[baselineNixCache] = old.URL()
	return true
}

// writeRandomNar writes a file of size random bytes under a valid NAR name.
func writeRandomNar(b *testing.B, root string, size int) string {
	b.Helper()
	hash := make([]byte, 32)
	_, _ = rand.Read(hash)
	name := "nar/" + nixbase32.EncodeToString(hash) + ".nar.zst"
	data := make([]byte, size)
	_, _ = rand.Read(data)
	os.MkdirAll(filepath.Join(root, "nar"), 0o755)
	if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
		b.Fatal(err)
	}
	return "/" + name
}

var contenders = []string{"nix_cache", "nginx", "file_server"}

// ceiling is a Caddy whose one handler answers every request with the same
// bytes from memory: as fast as any handler can be inside Caddy's HTTP
// server.
const ceiling = "caddy respond (ceiling)"

// startCeiling starts the ceiling contender, pinned as the other servers
// are, answering every request with body, and returns its URL.
func startCeiling(b *testing.B, body []byte) string {
	b.Helper()
	if strings.Contains(string(body), "`") {
		b.Fatal("the ceiling's body cannot hold a backtick")
	}
	site := fmt.Sprintf("http://:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n\theader Content-Type text/x-nix-narinfo\n\trespond `%s` 200\n}", body)
	caddy := harness.StartCaddy(b, harness.Caddyfile{Sites: []string{site}}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})
	return caddy.URL()
}

// chunkedNixCache is nix_cache on a server whose write_max_chunk is 2 MiB
// (nginx's sendfile_max_chunk) instead of Caddy's 64 KiB.
const chunkedNixCache = "nix_cache, write_max_chunk 2MiB"

// benchRefToken is an upload token of the ref tier of the nix_cache
// contender, which the credentialed contender presents on every request.
const benchRefToken = "bench-ref-token-0123456789abcdef"

// refCredential is the nix_cache contender asked with a credential of the
// ref tier, as a job's Nix asks: each request is identified, and what the
// cache proper lacks would be looked for in the credential's overlay.
const refCredential = "nix_cache, with a ref-tier credential"

// baselineNixCache is the contender BENCH_BASELINE_CADDY runs: a caddy
// built from an earlier commit.
const baselineNixCache = "nix_cache of BENCH_BASELINE_CADDY"

// BenchmarkNarDownload measures NAR throughput of nix_cache, nginx and
// Caddy's file_server on the same files: 64 MiB and 1 MiB NARs, over 1 and
// 16 connections, rounds alternating between the servers. With
// BENCH_BASELINE_CADDY, a caddy built from an earlier commit serves them
// too.
func BenchmarkNarDownload(b *testing.B) {
	root := filepath.Join(b.TempDir(), "cache")
	big, small := writeRandomNar(b, root, 64<<20), writeRandomNar(b, root, 1<<20)
	s := startServers(b, root, "")
	all := append(slices.Clone(contenders), chunkedNixCache)
	if s.startBaseline(b, root) {
		all = append(all, baselineNixCache)
	}
	dur := time.Duration(envInt("BENCH_LOAD_SECONDS", 3)) * time.Second
	for _, nar := range []struct {
		label string
		path  string
	}{{"64 MiB", big}, {"1 MiB", small}} {
		for _, conns := range []int{1, 16} {
			c := newComparison(fmt.Sprintf("NAR download, %s, %d connection(s)", nar.label, conns), "MiB/s", "higher",
				"nix_cache at least 0.95x nginx")
			c.holds = ratioAtLeast("nix_cache", "nginx", 0.95)
			c.notes = append(c.notes, loadNote)
			if nar.label == "1 MiB" {
				c.notes = append(c.notes, "Where the time goes (BENCH_PROFILES): two thirds of caddy's CPU time is the sendfile calls themselves. "+
					"Caddy's write idle timeout (on by default) feeds a response to the connection in 64 KiB chunks, so a 1 MiB NAR takes 16 sendfile calls after the header's write, where nginx makes one; the last row is the same nix_cache on a server with `servers { timeouts { write_max_chunk 2MiB } }`, nginx's chunk. "+
					"Caddy keeps the small default so that a slow client's write idle timeout applies to little at a time; the cache leaves that choice to the server's configuration. "+
					"file_server falls further behind because it loses sendfile altogether: the idle timeout wraps http.ServeContent's io.LimitedReader in one of its own, which Go's sendfile does not look through, so the file is copied in 32 KiB reads and writes; nix_cache hands the file itself on.")
			}
			for round := range envInt("BENCH_ROUNDS", 5) {
				order := slices.Clone(all)
				if round%2 == 1 {
					slices.Reverse(order)
				}
				for _, who := range order {
					r := load(b, s.urls[who], []string{nar.path}, conns, dur)
					c.add(who, float64(r.bytes)/(1<<20)/r.elapsed.Seconds())
				}
			}
			if profiling() {
				wait := profileCaddy(b, s.admin, fmt.Sprintf("nar-%s-%dconn", strings.ReplaceAll(nar.label, " ", ""), conns), dur)
				load(b, s.urls["nix_cache"], []string{nar.path}, conns, dur)
				wait()
			}
			b.Logf("%s: nix_cache %.0f, nginx %.0f, file_server %.0f, %s %.0f MiB/s", c.name,
				median(c.samples["nix_cache"]), median(c.samples["nginx"]), median(c.samples["file_server"]),
				chunkedNixCache, median(c.samples[chunkedNixCache]))
		}
	}
}

// syntheticNarinfo is a valid narinfo for a made-up path.
func syntheticNarinfo(i int) (hash, text string) {
	h := make([]byte, 20)
	_, _ = rand.Read(h)
	hash = nixbase32.EncodeToString(h)
	fileHash, narHash := make([]byte, 32), make([]byte, 32)
	_, _ = rand.Read(fileHash)
	_, _ = rand.Read(narHash)
	ref := make([]byte, 20)
	_, _ = rand.Read(ref)
	text = fmt.Sprintf("StorePath: /nix/store/%s-bench-%d\nURL: nar/%s.nar.xz\nCompression: xz\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: %s-dep %s-bench-%d\nDeriver: %s-bench-%d.drv\n",
		hash, i, nixbase32.EncodeToString(fileHash), nixbase32.EncodeToString(fileHash), 1000+i,
		nixbase32.EncodeToString(narHash), 4000+i, nixbase32.EncodeToString(ref), hash, i, nixbase32.EncodeToString(ref), i)
	return hash, text
}

// BenchmarkNarinfo measures narinfo requests per second and latency:
// nix_cache signing 10,000 distinct narinfos on the fly against nginx and
// file_server serving pre-signed copies of the same answers.
func BenchmarkNarinfo(b *testing.B) {
	root := filepath.Join(b.TempDir(), "cache")
	presigned := filepath.Join(b.TempDir(), "presigned")
	os.MkdirAll(root, 0o755)
	os.MkdirAll(presigned, 0o755)
	n := envInt("BENCH_NARINFOS", 10000)
	paths := make([]string, n)
	for i := range n {
		hash, text := syntheticNarinfo(i)
		os.WriteFile(filepath.Join(root, hash+".narinfo"), []byte(text), 0o644)
		paths[i] = "/" + hash + ".narinfo"
	}
	s := startServers(b, root, presigned)
	// The pre-signed copies are exactly what nix_cache answers.
	presign(b, s.urls["nix_cache"], presigned, paths)
	signed, err := os.ReadFile(filepath.Join(presigned, strings.TrimPrefix(paths[0], "/")))
	if err != nil {
		b.Fatal(err)
	}
	s.urls[ceiling] = startCeiling(b, signed)
	all := append(slices.Clone(contenders), ceiling, refCredential)
	s.urls[refCredential] = s.urls["nix_cache"]
	credential := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("nix:"+benchRefToken))
	if s.startBaseline(b, root) {
		all = append(all, baselineNixCache)
		// Signed once before the rounds, as nix_cache's were by presign.
		presign(b, s.urls[baselineNixCache], b.TempDir(), paths)
	}
	dur := time.Duration(envInt("BENCH_LOAD_SECONDS", 3)) * time.Second
	rps := newComparison("narinfo, 10,000 distinct, 16 connections: requests per second", "req/s", "higher", "nix_cache at least 1.0x nginx")
	rps.holds = ratioAtLeast("nix_cache", "nginx", 1.0)
	rps.notes = append(rps.notes, loadNote+" "+
		"nix_cache signs each narinfo once and then answers from memory: each request takes in the changes inotify queued for the cache directory (a local filesystem) with one non-blocking read instead of a stat of the file, and header and body go out in one write; file_server and nginx serve pre-signed copies from disk. "+
		"The ceiling is a caddy on the same CPU whose only handler answers every request with one signed narinfo from memory (`respond`): no handler inside Caddy's HTTP server can be faster, so nginx's pace is out of reach of any Caddy module on one core; what is left is Go's HTTP server and Caddy's request setup. "+
		"nix_cache notes each path's last use in memory and writes it to its index every 30 s; a caddy built before the index, when BENCH_BASELINE_CADDY names one, serves the same narinfos as its own contender. "+
		"The same nix_cache asked with an upload credential of the ref tier, as a job's Nix asks with its netrc, identifies every request (a SHA-256 of the token) before it answers from the cache proper. "+
		"Where the time goes (BENCH_PROFILES): about 40% of caddy's CPU time is system calls (the response's write and the request's read); the rest is Go's HTTP server, Caddy's routing and memory allocation, which the ceiling pays too.")
	p50 := newComparison("narinfo, 16 connections: p50 latency", "ms", "lower", "")
	p99 := newComparison("narinfo, 16 connections: p99 latency", "ms", "lower", "")
	for round := range envInt("BENCH_ROUNDS", 5) {
		order := slices.Clone(all)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, who := range order {
			var headers []string
			if who == refCredential {
				headers = append(headers, credential)
			}
			r := load(b, s.urls[who], paths, 16, dur, headers...)
			rps.add(who, float64(r.requests)/r.elapsed.Seconds())
			p50.add(who, float64(r.p50.Microseconds())/1000)
			p99.add(who, float64(r.p99.Microseconds())/1000)
		}
	}
	if profiling() {
		wait := profileCaddy(b, s.admin, "narinfo", dur)
		load(b, s.urls["nix_cache"], paths, 16, dur)
		wait()
	}
	b.Logf("narinfo req/s: nix_cache %.0f, nginx %.0f, file_server %.0f, %s %.0f", median(rps.samples["nix_cache"]),
		median(rps.samples["nginx"]), median(rps.samples["file_server"]), ceiling, median(rps.samples[ceiling]))
}
