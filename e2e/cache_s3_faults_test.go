package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestSubstitutionsSurviveACutS3Link substitutes a 21-path closure ten
// times, each into a fresh store, through a node whose connections to the
// S3 server are cut (a TCP reset in the middle of an answer) once they
// have passed 100 KiB: every substitution arrives whole and Nix never sees
// a cut NAR (it would retry), as the node resumes a cut read from the byte
// it reached.
func TestSubstitutionsSurviveACutS3Link(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		substitutionsSurviveACutS3Link(t, client)
	})
}

func substitutionsSurviveACutS3Link(t *testing.T, client harness.NixClient) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	throughProxy, proxy := behindFaultProxy(t, server)
	secret, public := keygen(t, "s3-cut-1")
	node := s3Node(t, throughProxy, secret)

	nix := client.Netrc(t, uploadToken)
	tops, base := nix.BuildSharedClosures("s3-cut", 10, 256<<10)
	if c := nix.Copy(append([]string{"--to", node.URL() + "/upload"}, tops...)...); c.Err != nil {
		t.Fatalf("nix copy:\n%s", c)
	}
	wantCount := 1 + 2*len(tops)

	// Every connection is reset once it has passed 100 KiB of answers:
	// inside a NAR of 256 KiB, or inside a later answer on a connection
	// kept open between GETs.
	proxy.ResetConnections(1, 100<<10)
	whole, retried := 0, 0
	for round := range 10 {
		consumer := nix.WithFreshCache()
		store := consumer.ChrootStore()
		c := consumer.Run("nix-store", append([]string{"--store", store, "--realise",
			"--option", "substituters", node.URL(), "--option", "trusted-public-keys", public}, tops...)...)
		got := consumer.StorePaths(store)
		switch {
		case c.Err != nil:
			t.Errorf("round %d: the substitution failed:\n%s", round, c)
		case len(got) != wantCount || !slices.Contains(got, base):
			t.Errorf("round %d: the store holds %d paths, want the closure's %d", round, len(got), wantCount)
		default:
			whole++
		}
		if strings.Contains(c.Output, "retrying") {
			retried++
			t.Logf("round %d: nix retried a download:\n%s", round, c.Output)
		}
	}
	t.Logf("%d of 10 substitutions whole, %d with a download nix had to retry; the proxy cut %d S3 connections", whole, retried, proxy.Resets.Load())
	if proxy.Resets.Load() == 0 {
		t.Fatal("the proxy cut no connection: the test proved nothing")
	}
	if retried > 0 {
		t.Errorf("in %d of 10 substitutions nix got a cut NAR from the node and had to download it again", retried)
	}
}

// behindFaultProxy is server as a node sees it through a new FaultProxy,
// and the proxy.
func behindFaultProxy(t *testing.T, server *harness.S3) (*harness.S3, *harness.FaultProxy) {
	t.Helper()
	proxy := harness.StartFaultProxy(t, strings.TrimPrefix(server.Endpoint, "http://"))
	throughProxy := *server
	throughProxy.Endpoint = "http://" + proxy.Addr
	return &throughProxy, proxy
}

// TestS3ServerFaults serves a cache through a node whose S3 server is
// slow, answers 503 or 500 to one request in three, or holds every request,
// while clients read every narinfo and NAR and nix copy pushes: the node
// never serves a wrong byte, never calls a path it holds missing, always
// answers (a 503 when the server holds its requests), shows no
// half-committed upload, and serves everything again right after the
// fault ends.
func TestS3ServerFaults(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	proxy := harness.StartHTTPFaultProxy(t, server.Endpoint)
	throughProxy := *server
	throughProxy.Endpoint = proxy.URL
	secret, public := keygen(t, "s3-faults-1")
	publicFile := filepath.Join(t.TempDir(), "cache.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node := s3Node(t, &throughProxy, secret)
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	tops, _ := nix.BuildSharedClosures("s3-faults", 5, 128<<10)
	if c := nix.Copy(append([]string{"--to", node.URL() + "/upload"}, tops...)...); c.Err != nil {
		t.Fatalf("nix copy:\n%s", c)
	}
	// What every narinfo and NAR is, read with no fault.
	expected := map[string][32]byte{}
	for _, top := range tops {
		for _, path := range strings.Fields(nix.Must("nix-store", "--query", "--requisites", top)) {
			narinfo := get(t, narinfoURL(node.URL(), path), nil, http.StatusOK)
			expected[narinfoURL(node.URL(), path)] = sha256.Sum256([]byte(narinfo))
			for line := range strings.Lines(narinfo) {
				if file, ok := strings.CutPrefix(line, "URL: "); ok {
					nar := node.URL() + "/" + strings.TrimSpace(file)
					expected[nar] = sha256.Sum256([]byte(get(t, nar, nil, http.StatusOK)))
				}
			}
		}
	}
	urls := slices.Sorted(maps.Keys(expected))

	for _, fault := range []struct {
		name  string
		apply func()
		// injected counts what the proxy did of the fault; nil when
		// the fault is in every answer.
		injected *atomic.Int64
	}{
		{"200 ms of latency", func() { proxy.Delay(200 * time.Millisecond) }, nil},
		{"503 to one request in three", func() { proxy.Fail(http.StatusServiceUnavailable, 3) }, &proxy.Injected},
		{"500 to one request in three", func() { proxy.Fail(http.StatusInternalServerError, 3) }, &proxy.Injected},
		{"every request held", proxy.Stall, &proxy.Stalls},
	} {
		var before int64
		if fault.injected != nil {
			before = fault.injected.Load()
		}
		fault.apply()
		pushed := make(chan harness.Command, 1)
		go func() {
			extra := nix.BuildClosure("s3-faults-push", 64<<10)
			pushed <- nix.WithFreshCache().Copy("--to", node.URL()+"/upload", extra.Top)
		}()
		var f s3FaultFigures
		var readers sync.WaitGroup
		deadline := time.Now().Add(5 * time.Second)
		for range 2 {
			readers.Go(func() {
				client := &http.Client{Timeout: 15 * time.Second}
				for i := 0; time.Now().Before(deadline); i++ {
					f.read(client, urls[i%len(urls)], expected)
				}
			})
		}
		readers.Wait()
		if fault.injected != nil && fault.injected.Load() == before {
			t.Errorf("%s: the proxy injected nothing: the reads proved nothing", fault.name)
		}
		proxy.Heal()
		healed := time.Now()
		client := &http.Client{Timeout: 15 * time.Second}
		if err := harness.Eventually(time.Minute, 50*time.Millisecond, func() error {
			for _, url := range urls {
				if err := servedWhole(client, url, expected); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Errorf("%s: after the fault ended the node did not serve everything again within a minute: %v", fault.name, err)
		}
		recovery := time.Since(healed)
		push := <-pushed
		verifyBucket(t, server, publicFile)
		t.Logf("%s: %d reads, %d served whole, %d refused (%v), %d cut; %d wrong, %d called missing; all served again %v after; the push %s",
			fault.name, f.reads, f.whole, f.refused, f.statuses(), f.cut, f.wrong, f.missing, recovery.Round(time.Millisecond), outcome(push))
		if f.wrong > 0 || f.missing > 0 || f.cut > 0 {
			t.Errorf("%s: %d reads got wrong bytes, %d called a stored path missing, %d got no whole answer", fault.name, f.wrong, f.missing, f.cut)
		}
	}
}

// s3FaultFigures count the reads of TestS3ServerFaults.
type s3FaultFigures struct {
	mu                                         sync.Mutex
	reads, whole, refused, cut, wrong, missing int
	byStatus                                   map[int]int
}

func (f *s3FaultFigures) read(client *http.Client, url string, expected map[string][32]byte) {
	resp, err := client.Get(url)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if err != nil {
		f.cut++
		return
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		f.missing++
	case resp.StatusCode != http.StatusOK:
		f.refused++
		if f.byStatus == nil {
			f.byStatus = map[int]int{}
		}
		f.byStatus[resp.StatusCode]++
	case err != nil:
		f.cut++
	case sha256.Sum256(body) != expected[url]:
		f.wrong++
	default:
		f.whole++
	}
}

// servedWhole checks that url answers 200 with the expected bytes.
func servedWhole(client *http.Client, url string, expected map[string][32]byte) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || sha256.Sum256(body) != expected[url] {
		return fmt.Errorf("%s: %s, %v", url, resp.Status, err)
	}
	return nil
}

func (f *s3FaultFigures) statuses() string {
	var parts []string
	for _, status := range slices.Sorted(maps.Keys(f.byStatus)) {
		parts = append(parts, fmt.Sprintf("%d×%d", f.byStatus[status], status))
	}
	return strings.Join(parts, " ")
}

func outcome(c harness.Command) string {
	if c.Err != nil {
		return "failed"
	}
	return "succeeded"
}
