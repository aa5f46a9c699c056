package bench

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// http2Client is a client that makes one connection to each server that
// presents a certificate pool trusts, HTTP/2 where the server offers it.
func http2Client(pool *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
		MaxConnsPerHost:   1,
	}}
}

// fetchAll GETs every path below base in turn and returns how long it took
// and the bytes read; every answer must be a 200.
func fetchAll(b *testing.B, client *http.Client, base string, paths []string) (time.Duration, int64) {
	b.Helper()
	var total int64
	start := time.Now()
	for _, p := range paths {
		resp, err := client.Get(base + p)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s%s: %s over %s, %v", base, p, resp.Status, resp.Proto, err)
		}
		total += n
	}
	return time.Since(start), total
}

// BenchmarkNixSubstitutesHTTPS is BenchmarkNixSubstitutes over TLS, as
// real caches are served: current Nix substitutes the closure from
// nix_cache behind Caddy's own TLS and from nginx with the same
// certificate, both offering HTTP/2, alternating; then one HTTP/2
// connection fetches the closure's narinfos in sequence, and its NARs.
func BenchmarkNixSubstitutesHTTPS(b *testing.B) {
	sub := newSubstitutable(b)
	cert, key, pool := harness.SelfSignedCert(b)
	secret, public := harness.TempKeygen(b, "bench-1")
	h1Port, filePort := harness.FreePort(b), harness.FreePort(b)
	site := func(port string, handler string) string {
		return fmt.Sprintf("https://127.0.0.1:%s {\n\tbind 127.0.0.1\n\ttls %s %s\n\t%s\n}", port, cert, key, handler)
	}
	cacheHandler := fmt.Sprintf("nix_cache {\n\t\troot %s\n\t\tsecret_key_file %s\n\t}", sub.root, secret)
	caddy := harness.StartCaddy(b, harness.Caddyfile{
		Global: []string{"auto_https off", fmt.Sprintf("servers 127.0.0.1:%d {\n\tprotocols h1\n}", h1Port)},
		Sites: []string{
			site("{$CADDY_HTTPS_PORT}", cacheHandler),
			site(fmt.Sprint(h1Port), cacheHandler),
			site(fmt.Sprint(filePort), fmt.Sprintf("file_server {\n\t\troot %s\n\t}", sub.presigned)),
		},
	}.String(), harness.CaddyOptions{Binary: pinnedCaddy(b, harness.CaddyBinary(b, "caddy")), NoHTTP: true})
	nginx, nginxPort := startNginxTLS(b, sub.presigned, serverCPU, cert, key)
	h1Nginx, nginxH1Port := startNginxWith(b, sub.presigned, serverCPU, " ssl", fmt.Sprintf("ssl_certificate %s;\n\t\tssl_certificate_key %s;", cert, key))
	goPort, goProc := startGoTool(b, "gofiles", serverCPU, nil, "-root", sub.presigned, "-cert", cert, "-key", key)
	urls := map[string]string{
		goFiles:       fmt.Sprintf("https://127.0.0.1:%d", goPort),
		"nix_cache":   fmt.Sprintf("https://127.0.0.1:%d", caddy.HTTPSPort),
		nixCacheH1:    fmt.Sprintf("https://127.0.0.1:%d", h1Port),
		nginxH1:       fmt.Sprintf("https://127.0.0.1:%d", nginxH1Port),
		"file_server": fmt.Sprintf("https://127.0.0.1:%d", filePort),
		"nginx":       fmt.Sprintf("https://127.0.0.1:%d", nginxPort),
	}
	// pids are the processes that serve each contender; caddy serves three,
	// one at a time.
	pids := map[string]int{goFiles: goProc.PID(), "nix_cache": caddy.PID(), nixCacheH1: caddy.PID(), "file_server": caddy.PID(), "nginx": nginx.PID(), nginxH1: h1Nginx.PID()}
	client := http2Client(pool)
	for who, u := range urls {
		want := 2
		if who == nixCacheH1 || who == nginxH1 {
			want = 1
		}
		if err := harness.Eventually(10*time.Second, 50*time.Millisecond, func() error {
			resp, err := client.Get(u + "/nix-cache-info")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.ProtoMajor != want {
				return fmt.Errorf("answered over %s", resp.Proto)
			}
			return nil
		}); err != nil {
			b.Fatalf("%s does not answer over HTTP/%d: %v", who, want, err)
		}
	}
	presignWith(b, client, urls["nix_cache"], sub.presigned, sub.narinfos)
	order := []string{"nix_cache", nixCacheH1, "file_server", "nginx", nginxH1, goFiles}
	rounds := envInt("BENCH_ROUNDS", 5)

	consumer := harness.NixCurrent().New(b, "")
	version := strings.TrimSpace(consumer.Must("nix", "--version"))
	c := newComparison(fmt.Sprintf("Nix (current) substitutes a closure of %d paths, zstd, into a fresh store, over HTTPS", len(sub.narinfos)), "s", "lower",
		"nix_cache no slower than nginx")
	c.holds = ratioAtMost("nix_cache", "nginx", 1.0)
	c.notes = append(c.notes, fmt.Sprintf("As the table above, with %s trusting a self-signed P-256 certificate for 127.0.0.1 (`ssl-cert-file`) that both servers present: "+
		"nix_cache behind Caddy's own TLS and HTTP/2, nginx with `ssl http2`, where Nix's curl negotiates HTTP/2 and multiplexes its requests on one connection; "+
		"nix_cache behind a Caddy server with `protocols h1`, and nginx with `ssl` alone, where curl opens up to http-connections (25) connections instead; "+
		"Caddy's file_server over HTTP/2, the ceiling of a handler in Caddy's TLS and HTTP/2 server; "+
		"and net/http's own FileServer over HTTP/2 with nothing of Caddy's (`bench/gofiles`), what Go's TLS and HTTP/2 server do for static files. "+
		"nginx, file_server and FileServer serve narinfo that nix_cache signed beforehand; the servers run on one CPU, Nix wherever it likes.", version))
	cpu := newComparison("HTTPS: the server's CPU time while Nix substitutes the closure", "ms", "lower", "")
	cpu.notes = append(cpu.notes, "The time the serving process spent on a CPU (nginx's with its worker) during each substitution of the table above, "+
		"from the scheduler's count of each thread (/proc/PID/task/*/schedstat): what serving the closure cost, apart from Nix's own work, with which it shares the machine's two CPUs.")
	for round := range rounds {
		for _, who := range roundOrder(order, round) {
			before := cpuTree(b, pids[who])
			c.add(who, sub.substitute(b, consumer, urls[who], public, "--option", "ssl-cert-file", cert).Seconds())
			cpu.add(who, (cpuTree(b, pids[who])-before)*1000)
		}
	}
	c.notes = append(c.notes, c.pairedNote("nix_cache", "nginx"), c.pairedNote("nix_cache", goFiles))
	cpu.notes = append(cpu.notes, cpu.pairedNote("nix_cache", "nginx"))

	if profiling() {
		// Profiled apart from the rounds: profiling slows caddy down.
		const profiled = 5 * time.Second
		wait := profileCaddy(b, caddy.Admin, "nix-substitutes-https", profiled)
		for end := time.Now().Add(profiled); time.Now().Before(end); {
			sub.substitute(b, consumer, urls["nix_cache"], public, "--option", "ssl-cert-file", cert)
		}
		wait()
	}

	nars := make(map[string][]string)
	for who, u := range urls {
		nars[who] = narURLsWith(b, client, u, sub.narinfos)
	}
	sequence := newComparison(fmt.Sprintf("HTTPS: the closure's %d narinfos in sequence over one connection", len(sub.narinfos)), "ms", "lower", "")
	sequence.notes = append(sequence.notes, "A Go client on the other CPU, one request at a time, on a connection already open (HTTP/1.1 for the two servers without HTTP/2).")
	download := newComparison(fmt.Sprintf("HTTPS: the closure's %d NARs in sequence over one connection", len(sub.narinfos)), "MiB/s", "higher", "")
	download.notes = append(download.notes, "The same client, each NAR (zstd) whole, one after the other. "+
		"Over HTTP/2 every DATA frame (16 KiB: clients such as curl allow no larger) goes through Go's HTTP/2 server's one writer goroutine per connection; "+
		"nix_cache hands it 9 bytes less than 16 KiB at a time, so that each frame with its header fills one TLS record and one write(2), where a full 16 KiB frame, file_server's, goes out as two records and two writes; "+
		"the same caddy, handler and TLS over HTTP/1.1 send faster than nginx over HTTP/2, so what separates Caddy from nginx here is Go's HTTP/2 server, which file_server and net/http's FileServer share.")
	for round := range rounds {
		for _, who := range roundOrder(order, round) {
			elapsed, _ := fetchAll(b, client, urls[who], sub.narinfos)
			sequence.add(who, float64(elapsed.Microseconds())/1000)
			elapsed, bytes := fetchAll(b, client, urls[who], nars[who])
			download.add(who, float64(bytes)/(1<<20)/elapsed.Seconds())
		}
	}
	b.Logf("%s: nix_cache %.2f s, over HTTP/1.1 %.2f s, file_server %.2f s, nginx %.2f s, over HTTP/1.1 %.2f s, net/http FileServer %.2f s", c.name, median(c.samples["nix_cache"]),
		median(c.samples[nixCacheH1]), median(c.samples["file_server"]), median(c.samples["nginx"]), median(c.samples[nginxH1]), median(c.samples[goFiles]))
}

// nixCacheH1 is nix_cache behind a Caddy server that speaks HTTP/1.1 only.
const nixCacheH1 = "nix_cache, protocols h1"

// nginxH1 is nginx over TLS without HTTP/2.
const nginxH1 = "nginx, HTTP/1.1"

// goFiles is net/http's own file server over HTTP/2, with nothing of
// Caddy's.
const goFiles = "Go net/http FileServer"
