package index

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestInUseNamesTheHolder opens an index another process holds locked:
// the error names the holder, which is read from Linux's /proc/locks.
func TestInUseNamesTheHolder(t *testing.T) {
	flock, err := exec.LookPath("flock")
	if err != nil {
		harness.Missing(t, "flock (util-linux)", err)
	}
	path := filepath.Join(t.TempDir(), "index.db")
	// Another process takes the lock, as another caddy or a `caddy
	// nix-cache` command would.
	holder := exec.Command(flock, "--exclusive", path, "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	var openErr error
	for range 100 {
		x, err := Open(path, 50*time.Millisecond)
		if err != nil {
			openErr = err
			break
		}
		_ = x.Close() // flock has not taken the file yet
		time.Sleep(20 * time.Millisecond)
	}
	if !errors.Is(openErr, ErrInUse) {
		t.Fatalf("Open while flock holds the file: %v, want ErrInUse", openErr)
	}
	want := fmt.Sprintf("pid %d: %s --exclusive %s sleep 60", holder.Process.Pid, flock, path)
	if !strings.Contains(openErr.Error(), want) {
		t.Fatalf("the error does not name the holder %q: %v", want, openErr)
	}
}
