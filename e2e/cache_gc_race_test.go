package e2e

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// raceDuration bounds the race between uploads, downloads and collections.
const raceDuration = 30 * time.Second

// TestCollectionsRaceUploadsAndDownloads runs 4 `nix copy --to http://`
// loops and 8 downloaders while the cache is collected in a loop to half
// its size: afterwards verify is clean, every closure whose top path is in
// the cache substitutes whole, and every NAR served was whole.
func TestCollectionsRaceUploadsAndDownloads(t *testing.T) {
	nix := harness.NetrcNix(t, uploadToken)
	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, "race-1")
	publicFile := filepath.Join(t.TempDir(), "cache.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	caddy := harness.StartCaddy(t, retentionCaddyfile(root, secret), harness.CaddyOptions{})
	tops, _ := nix.BuildSharedClosures("race", 24, 32<<10)
	if c := nix.Copy(append([]string{"--to", caddy.URL()}, tops...)...); c.Err != nil {
		t.Fatalf("nix copy:\n%s", c)
	}
	var full gcAnswer
	if c := nixCache(t, &full, "gc", "--dry-run", "--address="+caddy.Admin); c.Err != nil {
		t.Fatalf("gc --dry-run:\n%s", c)
	}

	deadline := time.Now().Add(raceDuration)
	var wg sync.WaitGroup
	var copies, refusedCopies, collections, narsServed atomic.Int64
	for w := range 4 {
		wg.Go(func() {
			mine := tops[w*6 : w*6+6]
			for i := 0; time.Now().Before(deadline); i++ {
				// Without its lookup cache, nix asks the cache each time
				// and uploads again whatever a collection deleted.
				if c := nix.Copy("--option", "narinfo-cache-positive-ttl", "0", "--to", caddy.URL(), mine[i%len(mine)]); c.Err != nil {
					refusedCopies.Add(1)
				} else {
					copies.Add(1)
				}
			}
		})
	}
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if downloadOne(t, caddy.URL(), root) {
					narsServed.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		for time.Now().Before(deadline) {
			resp, err := caddy.AdminDo(http.MethodPost, fmt.Sprintf("/nix-cache/gc?max_size=%d&min_age=0s", full.SizeBefore/2), nil)
			if err != nil {
				t.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("gc: %s %s", resp.Status, body)
				return
			}
			collections.Add(1)
		}
	})
	wg.Wait()
	stored := metricValue(t, caddy, `caddy_nix_cache_uploads_total{kind="narinfo",outcome="stored"}`)
	t.Logf("%d copies done, %d refused; %.0f narinfos uploaded; %d collections; %d NARs served whole",
		copies.Load(), refusedCopies.Load(), stored, collections.Load(), narsServed.Load())
	// The first copy stored 24*2+1 narinfos; the race stored more.
	if stored <= 24*2+1 || collections.Load() < 2 || narsServed.Load() == 0 {
		t.Fatalf("the race did not happen: %.0f narinfos uploaded, %d collections, %d NARs served", stored, collections.Load(), narsServed.Load())
	}

	// Refused uploads were refused with a 4xx, never failed with a 5xx.
	resp, err := caddy.AdminDo(http.MethodGet, "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(metrics), "\n") {
		if strings.HasPrefix(line, "caddy_nix_cache_uploads_total") && strings.Contains(line, `outcome="failed"`) && !strings.HasSuffix(line, " 0") {
			t.Errorf("uploads failed with a server error: %s", line)
		}
		if strings.HasPrefix(line, "caddy_nix_cache_upload_rejections_total") {
			t.Log(line)
		}
	}

	verifyClean(t, root, publicFile)
	for _, top := range tops {
		if _, err := os.Stat(filepath.Join(root, strings.SplitN(filepath.Base(top), "-", 2)[0]+".narinfo")); err != nil {
			continue
		}
		if c, store := substitute(nix, caddy.URL(), public, top); c.Err != nil {
			t.Fatalf("%s is in the cache but does not substitute:\n%s", top, c)
		} else if got := nix.StorePaths(store); len(got) != 3 {
			t.Fatalf("%s substituted as %v", top, got)
		}
	}
}

// metricValue reads one sample of caddy's metrics.
func metricValue(t *testing.T, caddy *harness.Caddy, sample string) float64 {
	t.Helper()
	resp, err := caddy.AdminDo(http.MethodGet, "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), sample+" "); ok {
			var v float64
			if _, err := fmt.Sscan(value, &v); err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("caddy's metrics have no sample %s", sample)
	return 0
}

// downloadOne fetches the narinfo of a path the cache holds and its NAR,
// as a substituter does, and fails the test if a NAR is served cut short
// or with the wrong content. It reports whether a NAR was served.
func downloadOne(t *testing.T, cacheURL, root string) bool {
	narinfos, _ := filepath.Glob(filepath.Join(root, "*.narinfo"))
	if len(narinfos) == 0 {
		return false
	}
	resp, err := http.Get(cacheURL + "/" + filepath.Base(narinfos[rand.IntN(len(narinfos))]))
	if err != nil {
		t.Error(err)
		return false
	}
	var narURL string
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if url, ok := strings.CutPrefix(scanner.Text(), "URL: "); ok {
			narURL = url
		}
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || narURL == "" {
		return false
	}
	resp, err = http.Get(cacheURL + "/" + narURL)
	if err != nil {
		t.Error(err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return false
	}
	hasher := sha256.New()
	n, err := io.Copy(hasher, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || n != resp.ContentLength {
		t.Errorf("GET %s: %s, %d of %d bytes, %v", narURL, resp.Status, n, resp.ContentLength, err)
		return false
	}
	name := strings.TrimPrefix(narURL, "nar/")
	if got := nixbase32.EncodeToString(hasher.Sum(nil)); !strings.HasPrefix(name, got) {
		t.Errorf("GET %s served content whose sha256 is %s", narURL, got)
	}
	return true
}
