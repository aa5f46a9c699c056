package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// copyWithin runs nix copy, failing the test when it has not ended
// within limit: a request that waits forever is the failure looked for.
func copyWithin(t *testing.T, nix *harness.Nix, limit time.Duration, args ...string) {
	t.Helper()
	done := make(chan harness.Command, 1)
	go func() { done <- nix.Copy(args...) }()
	select {
	case c := <-done:
		if c.Err != nil {
			t.Fatalf("nix copy:\n%s", c)
		}
	case <-time.After(limit):
		t.Fatalf("nix copy %s has not ended after %s", strings.Join(args, " "), limit)
	}
}

// TestUploadsGoOnWhileAnotherProcessHoldsTheIndex: a cache whose index
// file another process holds (a `caddy nix-cache` command, or a second
// caddy given the same index) serves and takes uploads at once, records
// them once it has the index, names the holder in its log, and stops on
// SIGTERM.
func TestUploadsGoOnWhileAnotherProcessHoldsTheIndex(t *testing.T) {
	flock := harness.LookTool(t, "flock")
	nix := harness.NetrcNix(t, uploadToken)
	secret, public := keygen(t, "index-held-1")
	indexFile := filepath.Join(t.TempDir(), "shared.index")

	// --close: the lock is flock's own, not its command's, and goes when
	// flock is killed.
	holder := exec.Command(flock, "--exclusive", "--close", indexFile, "sleep", "600")
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	release := func() {
		_ = syscall.Kill(-holder.Process.Pid, syscall.SIGKILL)
		_ = holder.Wait()
	}
	t.Cleanup(release)

	cacheWithIndex := func(root string) string {
		caddyfile := harness.UploadCache(root, secret, uploadToken)
		caddyfile.Cache.Options = append(caddyfile.Cache.Options, "index_file "+indexFile)
		return caddyfile.String()
	}
	first := harness.StartCaddy(t, cacheWithIndex(filepath.Join(t.TempDir(), "cache")), harness.CaddyOptions{})
	waitForLog(t, first, fmt.Sprintf("pid %d: %s --exclusive --close %s sleep 600", holder.Process.Pid, flock, indexFile))

	closure := nix.BuildClosure("index-held", 64<<10)
	copyWithin(t, nix, 2*time.Minute, "--to", first.URL(), closure.Top)
	substituteWhole(t, nix, first.URL(), public, closure, "substituting what was pushed while the index was held")

	// Once the holder lets go, the push is recorded with its pusher.
	release()
	var info struct {
		Pusher struct{ Token string } `json:"pusher"`
	}
	err := harness.Eventually(30*time.Second, 200*time.Millisecond, func() error {
		c := nixCache(t, &info, "path-info", closure.Top, "--address="+first.Admin)
		if c.Err != nil {
			return fmt.Errorf("path-info:\n%s", c)
		}
		if info.Pusher.Token != "token 1" {
			return fmt.Errorf("path-info names pusher %q, want token 1", info.Pusher.Token)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A second caddy given the same index file waits for the first, says
	// so, takes uploads meanwhile, and still stops on SIGTERM.
	second := harness.StartCaddy(t, cacheWithIndex(filepath.Join(t.TempDir(), "cache")), harness.CaddyOptions{})
	waitForLog(t, second, fmt.Sprintf("pid %d: ", first.PID()))
	if !strings.Contains(second.Log(), "index_file") {
		t.Errorf("the waiting caddy does not say how to separate the caches:\n%s", second.Log())
	}
	closure = nix.BuildClosure("index-held-second", 64<<10)
	copyWithin(t, nix, 2*time.Minute, "--to", second.URL(), closure.Top)
	substituteWhole(t, nix, second.URL(), public, closure, "substituting from the caddy waiting for the index")
	if !second.Terminate(20 * time.Second) {
		t.Fatalf("caddy waiting for the index did not stop within 20s of SIGTERM")
	}
}

// waitForLog waits until caddy has logged text.
func waitForLog(t *testing.T, caddy *harness.Caddy, text string) {
	t.Helper()
	err := harness.Eventually(30*time.Second, 100*time.Millisecond, func() error {
		if !strings.Contains(caddy.Log(), text) {
			return fmt.Errorf("caddy has not logged %q", text)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, caddy.Log())
	}
}
