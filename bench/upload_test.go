package bench

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

const uploadToken = "bench-upload-token-0123456789abcdef"

func uploadCaddy(b *testing.B, root string) *harness.Caddy {
	b.Helper()
	return uploadCaddyWith(b, root, harness.CaddyOptions{})
}

func uploadCaddyWith(b *testing.B, root string, opts harness.CaddyOptions) *harness.Caddy {
	b.Helper()
	secret, _ := harness.TempKeygen(b, "bench-1")
	return harness.StartCaddy(b, harness.UploadCache(root, secret, uploadToken).String(), opts)
}

// BenchmarkNixCopyHTTPvsFile times `nix copy --to http://` into nix_cache
// against `nix copy --to file://` of the same closure, alternating, with
// each Nix the tests run, and reports the ratio of the medians.
func BenchmarkNixCopyHTTPvsFile(b *testing.B) {
	for _, client := range []harness.NixClient{harness.Nix28, harness.NixCurrent()} {
		nixCopyHTTPvsFile(b, client)
	}
}

func nixCopyHTTPvsFile(b *testing.B, client harness.NixClient) {
	nix := client.Netrc(b, uploadToken)
	version := strings.TrimSpace(nix.Must("nix", "--version"))
	size := int64(envInt("BENCH_UPLOAD_MIB", 256)) << 20
	closure := nix.BuildClosure("bench-upload", size)
	compression := envString("BENCH_COMPRESSION", "zstd")
	var httpTimes, fileTimes, baselineTimes []time.Duration
	// A caddy built from an earlier commit, when BENCH_BASELINE_CADDY names
	// one, takes the same uploads each round, to show a change's cost.
	baseline := os.Getenv("BENCH_BASELINE_CADDY")
	for i := 0; i < envInt("BENCH_ROUNDS", 5); i++ {
		if baseline != "" {
			old := uploadCaddyWith(b, filepath.Join(b.TempDir(), "cache"), harness.CaddyOptions{Binary: baseline})
			start := time.Now()
			if c := nix.WithFreshCache().Copy("--to", old.URL()+"/?compression="+compression, closure.Top); c.Err != nil {
				b.Fatalf("nix copy --to http: (baseline):\n%s", c)
			}
			baselineTimes = append(baselineTimes, time.Since(start))
			old.Stop()
		}
		// A new cache each round, so every round uploads everything.
		caddy := uploadCaddy(b, filepath.Join(b.TempDir(), "cache"))
		start := time.Now()
		if c := nix.WithFreshCache().Copy("--to", caddy.URL()+"/?compression="+compression, closure.Top); c.Err != nil {
			b.Fatalf("nix copy --to http:\n%s", c)
		}
		httpTimes = append(httpTimes, time.Since(start))
		caddy.Stop()

		dir := filepath.Join(b.TempDir(), "file-cache")
		start = time.Now()
		if c := nix.WithFreshCache().Copy("--to", "file://"+dir+"?compression="+compression, closure.Top); c.Err != nil {
			b.Fatalf("nix copy --to file:\n%s", c)
		}
		fileTimes = append(fileTimes, time.Since(start))
	}
	c := newComparison(fmt.Sprintf("Upload with %s: nix copy of a 3-path closure with a %d MiB payload, compression=%s", version, size>>20, compression),
		"s", "lower", "nix copy --to http:// within 1.1x of --to file://")
	for i := range httpTimes {
		c.add("nix copy --to file://", fileTimes[i].Seconds())
		c.add("nix copy --to http:// (nix_cache)", httpTimes[i].Seconds())
	}
	for _, t := range baselineTimes {
		c.add("nix copy --to http:// (nix_cache of BENCH_BASELINE_CADDY)", t.Seconds())
	}
	c.holds = ratioAtMost("nix copy --to http:// (nix_cache)", "nix copy --to file://", 1.1)
	if client == harness.Nix28 {
		c.notes = append(c.notes, "Nix 2.8 reads an HTTP upload's whole compressed NAR into memory before it sends it, which the file:// store does not; that client-side time is in the http:// figure.")
	}
	h, f := median(httpTimes), median(fileTimes)
	b.ReportMetric(h.Seconds(), "http-s")
	b.ReportMetric(f.Seconds(), "file-s")
	b.ReportMetric(h.Seconds()/f.Seconds(), "http/file")
	b.Logf("%s, closure with a %d MiB payload, compression=%s: http %v (runs %v), file %v (runs %v), ratio %.3f",
		version, size>>20, compression, h, httpTimes, f, fileTimes, h.Seconds()/f.Seconds())
}

// BenchmarkUploadPeakRSS uploads one large NAR and reports how far caddy's
// peak resident memory (VmHWM) rose above its idle size.
func BenchmarkUploadPeakRSS(b *testing.B) {
	nix := harness.NetrcNix(b, uploadToken)
	size := int64(envInt("BENCH_RSS_MIB", 1024)) << 20
	closure := nix.BuildClosure("bench-rss", size)
	for _, compression := range []string{"none", "zstd"} {
		nar, narURL := narOf(b, nix, closure, compression)
		caddy := uploadCaddy(b, filepath.Join(b.TempDir(), "cache"))
		pid := caddy.PID()
		idle := procStatusKiB(b, pid, "VmRSS")
		sent, elapsed := putNar(b, caddy.URL(), nar, narURL)
		peak := procStatusKiB(b, pid, "VmHWM")
		b.ReportMetric(float64(peak-idle)/1024, compression+"-peak-above-idle-MiB")
		rss := newComparison(fmt.Sprintf("Upload memory: caddy's peak RSS above idle while one %d MiB NAR (%s) is uploaded", size>>20, compression),
			"MiB", "lower", "under 64 MiB above idle")
		rss.add("nix_cache", float64(peak-idle)/1024)
		rss.holds = func(m map[string]float64) bool { return m["nix_cache"] < 64 }
		b.Logf("%s NAR of %d MiB (%d MiB on the wire): idle RSS %d MiB, peak RSS %d MiB, %.1f MiB above idle, %v (%.0f MiB/s)",
			compression, size>>20, sent>>20, idle/1024, peak/1024, float64(peak-idle)/1024, elapsed, float64(sent)/(1<<20)/elapsed.Seconds())
		caddy.Stop()
	}
}

// narOf copies closure to a new file:// cache with compression and returns
// the file and URL path of its largest NAR.
func narOf(b *testing.B, nix *harness.Nix, closure harness.Closure, compression string) (string, string) {
	b.Helper()
	src := filepath.Join(b.TempDir(), "src")
	if c := nix.Copy("--to", "file://"+src+"?compression="+compression, closure.Top); c.Err != nil {
		b.Fatalf("preparing the NAR:\n%s", c)
	}
	return largestNar(b, src)
}

// putNar uploads the NAR file nar to base/narURL with the upload token, as
// nix copy does, and returns its size and how long the upload took.
func putNar(b *testing.B, base, nar, narURL string) (int64, time.Duration) {
	b.Helper()
	f, err := os.Open(nar)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPut, base+"/"+narURL, f)
	if err != nil {
		b.Fatal(err)
	}
	req.ContentLength = info.Size()
	req.SetBasicAuth("nix", uploadToken)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		b.Fatalf("PUT of the NAR: %v %v", err, resp)
	}
	resp.Body.Close()
	return info.Size(), time.Since(start)
}

func largestNar(b *testing.B, cache string) (string, string) {
	b.Helper()
	nars, _ := filepath.Glob(filepath.Join(cache, "nar", "*"))
	var best string
	var bestSize int64
	for _, n := range nars {
		if info, err := os.Stat(n); err == nil && info.Size() > bestSize {
			best, bestSize = n, info.Size()
		}
	}
	return best, "nar/" + filepath.Base(best)
}

// BenchmarkHostileLogUploadPeakRSS sends four build logs at once, each a
// small gzip body that decodes to BENCH_HOSTILE_LOG_MIB (150) MiB, as a
// hostile job with an upload credential could, and reports how far caddy's
// peak resident memory rose above idle. BENCH_BASELINE_CADDY names another
// caddy binary (say, one built before logs were streamed to disk) to
// measure beside it.
func BenchmarkHostileLogUploadPeakRSS(b *testing.B) {
	decoded := envInt("BENCH_HOSTILE_LOG_MIB", 150) << 20
	body := gzipOfZeros(b, decoded)
	binaries := map[string]string{"nix_cache": harness.CaddyBinary(b, "caddy")}
	order := []string{"nix_cache"}
	if baseline := os.Getenv("BENCH_BASELINE_CADDY"); baseline != "" {
		binaries["nix_cache before streaming logs (BENCH_BASELINE_CADDY)"] = baseline
		order = append([]string{"nix_cache before streaming logs (BENCH_BASELINE_CADDY)"}, order...)
	}
	c := newComparison(fmt.Sprintf("Upload memory: caddy's peak RSS above idle under 4 concurrent %d KiB gzip log uploads that decode to %d MiB each",
		len(body)>>10, decoded>>20), "MiB", "lower", "under 64 MiB above idle")
	for range envInt("BENCH_ROUNDS", 3) {
		for _, name := range order {
			caddy := uploadCaddyWith(b, filepath.Join(b.TempDir(), "cache"), harness.CaddyOptions{Binary: binaries[name]})
			pid := caddy.PID()
			idle := procStatusKiB(b, pid, "VmRSS")
			var wg sync.WaitGroup
			statuses := make([]int, 4)
			for i := range statuses {
				wg.Go(func() {
					drv := fmt.Sprintf("log/%s-hostile-%d.drv", strings.Repeat("a", 32), i)
					req, _ := http.NewRequest(http.MethodPut, caddy.URL()+"/"+drv, bytes.NewReader(body))
					req.SetBasicAuth("nix", uploadToken)
					req.Header.Set("Content-Encoding", "gzip")
					if resp, err := http.DefaultClient.Do(req); err == nil {
						statuses[i] = resp.StatusCode
						resp.Body.Close()
					}
				})
			}
			wg.Wait()
			peak := procStatusKiB(b, pid, "VmHWM")
			c.add(name, float64(peak-idle)/1024)
			b.Logf("%s: answers %v, idle %d MiB, peak %d MiB", name, statuses, idle/1024, peak/1024)
			caddy.Stop()
		}
	}
	c.holds = func(m map[string]float64) bool { return m["nix_cache"] < 64 }
	c.notes = append(c.notes, "nix_cache streams a log to disk and refuses it past max_log_size (64 MiB by default) with 413.")
}

func gzipOfZeros(b *testing.B, size int) []byte {
	b.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for written := 0; written < size; written += len(zeros) {
		if _, err := zw.Write(zeros); err != nil {
			b.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}
