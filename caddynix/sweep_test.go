package caddynix

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
)

// TestSweepRemovesDeadWritersLeftovers leaves temporary files as a crashed
// server would, named after live process ids (this process's own, as when
// caddy is PID 1 in a container, and PID 1), next to one a live writer
// holds: verify reports the leftovers as problems, and the next start
// removes them and only them.
func TestSweepRemovesDeadWritersLeftovers(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	if err := os.MkdirAll(filepath.Join(root, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{
		filepath.Join(root, "nar", dir.TempPrefix+strconv.Itoa(os.Getpid())+"-0123456789abcdef"),
		filepath.Join(root, "nar", dir.TempPrefix+"1-0123456789abcdef"),
		filepath.Join(root, dir.TempPrefix+"fedcba9876543210"),
	}
	for _, name := range leftovers {
		if err := os.WriteFile(name, []byte("half a NAR"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	live := filepath.Join(root, "nar", dir.TempPrefix+"live0123456789ab")
	f, err := os.Create(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}

	report, err := verifyDir(t, root, verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	problems, notes := strings.Join(report.Problems, "\n"), strings.Join(report.Notes, "\n")
	for _, name := range leftovers {
		if !strings.Contains(problems, filepath.Base(name)) {
			t.Errorf("verify does not report the leftover %s as a problem:\n%s", filepath.Base(name), problems)
		}
	}
	if strings.Contains(problems, filepath.Base(live)) || !strings.Contains(notes, "upload in progress: nar/"+filepath.Base(live)) {
		t.Errorf("verify should note the live upload, not report it:\nproblems:\n%s\nnotes:\n%s", problems, notes)
	}

	h := &Handler{Root: root}
	ctx := testContext(t)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Cleanup() }()
	for _, name := range leftovers {
		if _, err := os.Stat(name); err == nil {
			t.Errorf("the leftover %s survived the start", filepath.Base(name))
		}
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the live writer's file was removed: %v", err)
	}
}
