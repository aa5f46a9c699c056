package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// s3Bench is a real S3 server pinned to the server CPU, with a bucket that
// anyone may read, so that wrk can GET its objects directly.
type s3Bench struct {
	server *harness.S3
	client *minio.Client
}

func startS3Bench(b *testing.B) *s3Bench {
	b.Helper()
	server := harness.StartS3(b)
	server.CreateBucket("nix")
	server.AllowAnonymous("nix", false)
	if out, err := exec.Command(harness.LookTool(b, "taskset"), "-a", "-p", "-c", serverCPU, strconv.Itoa(server.PID())).CombinedOutput(); err != nil {
		b.Fatalf("pinning the S3 server: %v\n%s", err, out)
	}
	return &s3Bench{server: server, client: server.Client()}
}

func (s *s3Bench) put(b *testing.B, name string, data []byte) {
	b.Helper()
	if _, err := s.client.PutObject(context.Background(), "nix", "main/"+name, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		b.Fatalf("storing %s: %v", name, err)
	}
}

// node is a nix_cache on the bucket, on the server CPU, signing with a
// fresh key and taking uploads.
func (s *s3Bench) node(b *testing.B) *harness.Caddy {
	b.Helper()
	secret, _ := harness.TempKeygen(b, "bench-s3-1")
	return harness.StartCaddy(b, harness.Caddyfile{Cache: &harness.CacheSite{
		Options: []string{s.server.StorageBlock("nix", "main/"), "secret_key_file " + secret},
		Upload:  []string{"token " + uploadToken},
	}}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})
}

// BenchmarkS3 measures nix_cache on an S3 bucket: NAR downloads through it
// against GETs straight from the S3 server, narinfo requests against
// nix_cache on a directory, and the memory an upload of a 1 GiB NAR takes.
func BenchmarkS3(b *testing.B) {
	s := startS3Bench(b)
	node := s.node(b)
	proxy := fmt.Sprintf("http://127.0.0.1:%d", startSplicingProxy(b, strings.TrimPrefix(s.server.Endpoint, "http://"), serverCPU))
	reverse := harness.StartCaddy(b, harness.Caddyfile{Sites: []string{
		fmt.Sprintf("http://127.0.0.1:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n\treverse_proxy %s\n}", strings.TrimPrefix(s.server.Endpoint, "http://")),
	}}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})
	goSplicerPort, goSplicerProc := startGoSplicer(b, s.server, "nix", "main/", serverCPU)
	goLeastPort, _ := startGoSplicer(b, s.server, "nix", "main/", serverCPU, "-least")
	goUnderCaddyPort, goUnderCaddyProc := startGoSplicer(b, s.server, "nix", "main/", serverCPU, "-caddy")
	goSplicer := fmt.Sprintf("http://127.0.0.1:%d", goSplicerPort)
	goLeast := fmt.Sprintf("http://127.0.0.1:%d", goLeastPort)
	goUnderCaddy := fmt.Sprintf("http://127.0.0.1:%d", goUnderCaddyPort)
	// The processes whose CPU time per NAR is compared: those doing the
	// node's work.
	pids := map[string]int{"nix_cache on S3": node.PID(), goSplicing: goSplicerProc.PID(), goCaddySplicing: goUnderCaddyProc.PID()}
	dur := time.Duration(envInt("BENCH_LOAD_SECONDS", 3)) * time.Second

	for _, size := range []int{64 << 20, 1 << 20} {
		hash := make([]byte, 32)
		_, _ = rand.Read(hash)
		name := "nar/" + nixbase32.EncodeToString(hash) + ".nar.zst"
		data := make([]byte, size)
		_, _ = rand.Read(data)
		s.put(b, name, data)
		presigned, err := s.client.PresignedGetObject(context.Background(), "nix", "main/"+name, time.Hour, nil)
		if err != nil {
			b.Fatal(err)
		}
		for _, conns := range []int{1, 16} {
			c := newComparison(fmt.Sprintf("S3: NAR download, %d MiB, %d connection(s)", size>>20, conns), "MiB/s", "higher",
				"nix_cache at least 0.8x a GET from the S3 server")
			c.holds = ratioAtLeast("nix_cache on S3", "GET from the S3 server", 0.8)
			c.notes = append(c.notes, loadNote+" The S3 server (versitygw v1.8.0, POSIX backend, connections kept open between requests) runs on the server CPU too, so through nix_cache one core does the S3 server's work and caddy's. "+
				"Through the node, caddy makes one signed GET of the object on a connection of its own, with Connection: close, and hands that connection down to the client's, and the kernel splices the bytes from one to the other (wrk is a plain HTTP/1 client; over TLS or HTTP/2 every byte is copied in 256 KiB pieces). "+
				"The second row is an anonymous GET of the object, which the S3 server answers without checking a signature. "+
				"The third is a GET of a URL the S3 server's credentials signed, as `storage s3 { redirect 5m }` sends clients to and as every GET of the node is signed: "+
				"its own speed, and the ceiling of any node that asks the S3 server for what it serves on the same core. "+
				"The fourth is haproxy (2.6, one thread, on the server CPU too) passing anonymous GETs to the S3 server and splicing the responses back, socket to socket in the kernel: "+
				"the least work any proxy in front of the S3 server can do for a response, and so the ceiling of one on this core. "+
				"The fifth is Caddy's own reverse_proxy (on the server CPU too) passing anonymous GETs to the S3 server over kept-alive connections and copying the responses back through user space: Caddy's proxy, with no signing and no handler of its own. "+
				"The last two are a Go program with nothing of Caddy's (`bench/splicer`, on the server CPU too) that serves with net/http and hands the S3 server's connection to it to splice: "+
				"the first does what the node does for a NAR (a signed GET on a connection of its own, which ends with the body), the second the least a Go proxy can (anonymous GETs on kept-alive connections, as haproxy). "+
				"The last row is the first of them as a Caddy HTTP handler under Caddy's own server, with its default timeouts, splicing in 2 MiB pieces as the node does: the node's work with Caddy's request handling and nothing of the node's.")
			// wrk sends a path of its own on the base URL's host.
			urls := map[string]string{"nix_cache on S3": node.URL(), "GET from the S3 server": s.server.Endpoint, signedGet: s.server.Endpoint, splicingProxy: proxy, caddyProxy: reverse.URL(),
				goSplicing: goSplicer, goLeastSplicing: goLeast, goCaddySplicing: goUnderCaddy}
			paths := map[string]string{"nix_cache on S3": "/" + name, "GET from the S3 server": "/nix/main/" + name, signedGet: presigned.RequestURI(), splicingProxy: "/nix/main/" + name, caddyProxy: "/nix/main/" + name,
				goSplicing: "/" + name, goLeastSplicing: "/" + name, goCaddySplicing: "/" + name}
			cpu := newComparison(fmt.Sprintf("S3: CPU time per NAR of the process serving it, %d MiB, %d connection(s)", size>>20, conns), "µs", "lower", "")
			cpu.notes = append(cpu.notes, "The CPU time (user and system, every thread) of caddy, or of the Go program, over a run of the download above, divided by the NARs it served: what each spends on the node's work for a NAR.")
			s3CPU := newComparison(fmt.Sprintf("S3: the S3 server's CPU time per NAR, %d MiB, %d connection(s)", size>>20, conns), "µs", "lower", "")
			s3CPU.notes = append(s3CPU.notes, "The S3 server's CPU time over a run of the download above, divided by the NARs served: what each way of asking it for a NAR costs it.")
			for round := range envInt("BENCH_ROUNDS", 5) {
				for _, who := range roundOrder([]string{"nix_cache on S3", "GET from the S3 server", signedGet, splicingProxy, caddyProxy, goSplicing, goLeastSplicing, goCaddySplicing}, round) {
					pid, timed := pids[who]
					var before float64
					if timed {
						before = cpuTree(b, pid)
					}
					serverBefore := cpuTree(b, s.server.PID())
					r := load(b, urls[who], []string{paths[who]}, conns, dur)
					c.add(who, float64(r.bytes)/(1<<20)/r.elapsed.Seconds())
					if timed {
						cpu.add(who, (cpuTree(b, pid)-before)/float64(r.requests)*1e6)
					}
					s3CPU.add(who, (cpuTree(b, s.server.PID())-serverBefore)/float64(r.requests)*1e6)
				}
			}
			cpu.notes = append(cpu.notes, cpu.pairedNote("nix_cache on S3", goCaddySplicing), cpu.pairedNote(goCaddySplicing, goSplicing))
			s3CPU.notes = append(s3CPU.notes, s3CPU.pairedNote("nix_cache on S3", signedGet), s3CPU.pairedNote("nix_cache on S3", goSplicing))
			c.notes = append(c.notes, c.pairedNote("nix_cache on S3", "GET from the S3 server"), c.pairedNote("nix_cache on S3", goSplicing),
				c.pairedNote("nix_cache on S3", goCaddySplicing), c.pairedNote(goCaddySplicing, goSplicing))
			if profiling() {
				wait := profileCaddy(b, node.Admin, fmt.Sprintf("s3-nar-%dmib-%dconn", size>>20, conns), dur)
				load(b, node.URL(), []string{"/" + name}, conns, dur)
				wait()
			}
		}
	}

	// narinfo: the same narinfos in the bucket and in a directory.
	root := filepath.Join(b.TempDir(), "cache")
	if err := os.MkdirAll(root, 0o755); err != nil {
		b.Fatal(err)
	}
	n := envInt("BENCH_S3_NARINFOS", 2000)
	paths := make([]string, n)
	for i := range n {
		hash, text := syntheticNarinfo(i)
		s.put(b, hash+".narinfo", []byte(text))
		if err := os.WriteFile(filepath.Join(root, hash+".narinfo"), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
		paths[i] = "/" + hash + ".narinfo"
	}
	secret, _ := harness.TempKeygen(b, "bench-dir-1")
	dirNode := harness.StartCaddy(b, harness.Caddyfile{Cache: &harness.CacheSite{Options: harness.CacheOptions(root, secret)}}.String(),
		harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy"))})
	rps := newComparison(fmt.Sprintf("S3: narinfo, %d distinct, 16 connections: requests per second", n), "req/s", "higher",
		"nix_cache on S3 at least 0.8x nix_cache on a directory")
	rps.holds = ratioAtLeast("nix_cache on S3", "nix_cache on a directory", 0.8)
	rps.notes = append(rps.notes, loadNote+" Both nodes serve the signed narinfos from memory: the directory's while inotify reports their files unchanged, "+
		"the S3 node's while the collection announcement (`retention/doomed`), read again every quarter of gc_grace, names none of them, for a gc_grace at most. "+
		"Before the rounds every contender answers every narinfo once, so that the nodes have signed each. "+
		"The last row is the S3 server answering GETs of the same (unsigned) narinfos itself, its own ceiling on this core.")
	urls := map[string]string{"nix_cache on S3": node.URL(), "nix_cache on a directory": dirNode.URL(), "GET from the S3 server": s.server.Endpoint}
	direct := make([]string, len(paths))
	for i, p := range paths {
		direct[i] = "/nix/main" + p
	}
	for who, u := range urls {
		list := paths
		if who == "GET from the S3 server" {
			list = direct
		}
		fetchAll(b, http.DefaultClient, u, list)
	}
	for round := range envInt("BENCH_ROUNDS", 5) {
		order := []string{"nix_cache on S3", "nix_cache on a directory", "GET from the S3 server"}
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, who := range order {
			list := paths
			if who == "GET from the S3 server" {
				list = direct
			}
			r := load(b, urls[who], list, 16, dur)
			rps.add(who, float64(r.requests)/r.elapsed.Seconds())
		}
	}

	// Memory: one 1 GiB NAR uploaded through a node to the bucket.
	nix := harness.NetrcNix(b, uploadToken)
	size := int64(envInt("BENCH_RSS_MIB", 1024)) << 20
	closure := nix.BuildClosure("bench-s3-rss", size)
	nar, narURL := narOf(b, nix, closure, "none")
	fresh := s.node(b)
	idle := procStatusKiB(b, fresh.PID(), "VmRSS")
	_, elapsed := putNar(b, fresh.URL(), nar, narURL)
	peak := procStatusKiB(b, fresh.PID(), "VmHWM")
	rss := newComparison(fmt.Sprintf("S3: caddy's peak RSS above idle while one %d MiB NAR is uploaded to the bucket", size>>20), "MiB", "lower", "under 64 MiB above idle")
	rss.add("nix_cache on S3", float64(peak-idle)/1024)
	rss.holds = func(m map[string]float64) bool { return m["nix_cache on S3"] < 64 }
	rss.notes = append(rss.notes, "An upload holds one part (part_size, 16 MiB by default) in memory, allocated whole once it outgrows 64 KiB.")
	b.Logf("%d MiB upload to S3: idle %d MiB, peak %d MiB, %v", size>>20, idle/1024, peak/1024, elapsed)
}

// The rows of BenchmarkS3's NAR downloads beside nix_cache's and the S3
// server's own GET.
const (
	signedGet     = "signed GET from the S3 server"
	splicingProxy = "haproxy splicing from the S3 server"
	caddyProxy    = "Caddy's reverse_proxy from the S3 server"
	// Go with net/http and no Caddy, splicing: the node's work, and the
	// least a Go proxy does.
	goSplicing      = "Go net/http splicing signed GETs"
	goLeastSplicing = "Go net/http splicing kept-alive anonymous GETs"
	// The first of them under Caddy's server: the node's work with
	// Caddy's request handling.
	goCaddySplicing = "the same Go splicing as a Caddy handler"
)
