package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestKillAnywhere kills caddy with SIGKILL at a random moment while it
// takes an upload, collects and keeps what it fetches from an upstream,
// all at once, and starts it again: each time `verify --nar-hash` finds
// the cache clean (every NAR matches, every narinfo's closure whole), and
// the index the start reconciled plans the same collection as one rebuilt
// from the files. E2E_KILL_ROUNDS sets the rounds (5; the long form 50).
func TestKillAnywhere(t *testing.T) {
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("E2E_KILL_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	pushes := make([]harness.Closure, rounds)
	pulls := make([]harness.Closure, rounds)
	upRoot := filepath.Join(t.TempDir(), "upstream")
	for i := range rounds {
		pushes[i] = nix.BuildClosure(fmt.Sprintf("kill-push-%d", i), 4<<20)
		pulls[i] = nix.BuildClosure(fmt.Sprintf("kill-pull-%d", i), 2<<20)
		if c := nix.Copy("--to", "file://"+upRoot+"?compression=zstd", pulls[i].Top); c.Err != nil {
			t.Fatalf("filling the upstream:\n%s", c)
		}
	}
	upSecret, upPublic := keygen(t, "kill-upstream-1")
	upstream := harness.StartCaddy(t, cacheCaddyfile(upRoot, upSecret), harness.CaddyOptions{})

	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, "kill-1")
	publicFile := filepath.Join(t.TempDir(), "cache.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	node := harness.StartCaddy(t, harness.Caddyfile{Cache: &harness.CacheSite{
		Options: append(harness.CacheOptions(root, secret),
			"upstream "+upstream.URL()+" {\n\ttrusted_public_key "+upPublic+"\n\tkeep\n}",
			"retention {\n\tmax_size 1GiB\n\tinterval 1h\n}"),
		Upload: []string{"token " + uploadToken},
	}}.String(), harness.CaddyOptions{})

	for round := range rounds {
		var work sync.WaitGroup
		work.Go(func() {
			nix.WithFreshCache().Copy("--to", node.URL()+"/upload?compression=zstd", pushes[round].Top)
		})
		work.Go(func() {
			consumer := nix.WithFreshCache()
			consumer.Run("nix-store", "--store", consumer.ChrootStore(), "--realise", pulls[round].Top,
				"--option", "substituters", node.URL(), "--option", "trusted-public-keys", upPublic)
		})
		work.Go(func() {
			time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
			if resp, err := node.AdminDo(http.MethodPost, "/nix-cache/gc?max_size=8MiB&min_age=0s", nil); err == nil {
				_ = resp.Body.Close()
			}
		})
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Millisecond)
		node.Kill()
		work.Wait()
		node.Start()

		report := verifyClean(t, root, publicFile)
		reconciled := collectionPlan(t, node)
		adminPost(t, node, "/nix-cache/reindex?full=true")
		if rebuilt := collectionPlan(t, node); !slices.Equal(reconciled, rebuilt) {
			t.Fatalf("round %d: the reconciled index plans to delete %v, the rebuilt one %v", round, reconciled, rebuilt)
		}
		t.Logf("round %d: clean (%s), a collection to 2 MiB would delete %d paths", round, firstLine(report), len(reconciled))
	}
}

// collectionPlan is what a collection to 2 MiB would delete, sorted.
func collectionPlan(t *testing.T, node *harness.Caddy) []string {
	t.Helper()
	status, body := adminCall(t, node, http.MethodPost, "/nix-cache/gc?dry_run=true&max_size=2MiB&min_age=0s")
	if status != http.StatusOK {
		t.Fatalf("gc dry run: %d %s", status, body)
	}
	var report struct {
		Deleted []string `json:"deleted"`
	}
	if err := json.Unmarshal([]byte(body), &report); err != nil {
		t.Fatalf("gc dry run answered %s: %v", body, err)
	}
	slices.Sort(report.Deleted)
	return report.Deleted
}

func firstLine(s string) string {
	for line := range strings.Lines(s) {
		return strings.TrimSpace(line)
	}
	return ""
}
