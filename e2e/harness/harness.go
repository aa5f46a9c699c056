// Package harness starts the real peers that the end-to-end tests run
// against: the caddy binary built from this repository, Nix, a Gitea server
// and a Docker daemon. Each helper starts the real program; nothing is mocked.
//
// A helper whose tool is missing skips the test with a message naming the
// tool, except when the environment variable E2E is "require" (as in CI),
// where the missing tool fails the test instead.
package harness

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Required reports whether missing tools fail tests instead of skipping them.
func Required() bool {
	return os.Getenv("E2E") == "require"
}

// skipShort skips an end-to-end test under `go test -short` (make unit):
// those need the real peers that make test builds and starts (the built
// caddy, nix, Docker, Gitea, the S3 server, the npm clients), which short
// mode does not provide. Under E2E=require, short mode is a failure instead.
func skipShort(t testing.TB) {
	t.Helper()
	if !testing.Short() {
		return
	}
	const why = "end-to-end test needing bin/caddy, nix, Docker, Gitea, the S3 server versitygw or the npm clients: not run with -short (make unit)"
	if Required() {
		t.Fatalf("%s, and E2E=require: run it without -short (make test)", why)
	}
	t.Skip("skipping: " + why)
}

// Missing skips t because tool is unavailable, or fails it under E2E=require.
func Missing(t testing.TB, tool string, why error) {
	t.Helper()
	msg := fmt.Sprintf("%s is not available: %v", tool, why)
	if Required() {
		t.Fatalf("%s (E2E=require: install it, see .ci/run)", msg)
	}
	t.Skipf("skipping: %s (E2E=require would fail here)", msg)
}

// LookTool returns the path of a command, or skips (or fails) t naming it.
func LookTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name, err)
	}
	return path
}

var repoRoot = sync.OnceValues(func() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/cargoxx-pkgs/runner\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod of github.com/cargoxx-pkgs/runner not found above the working directory")
		}
		dir = parent
	}
})

// RepoRoot is the root of this repository's work tree.
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free loopback port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Command is the result of running a program.
type Command struct {
	Args   []string
	Stdout string // standard output alone
	Output string // standard output, then standard error
	Err    error
}

// String describes the command and its output, for failure messages.
func (c Command) String() string {
	return fmt.Sprintf("$ %s\n%s(%v)", strings.Join(c.Args, " "), c.Output, c.Err)
}

// Run runs a program with extra environment variables and captures what it
// prints.
func Run(env []string, dir string, name string, args ...string) Command {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	return Command{
		Args:   append([]string{name}, args...),
		Stdout: stdout.String(),
		Output: stdout.String() + stderr.String(),
		Err:    err,
	}
}

// MustRun runs a program and returns its standard output, failing t, with
// everything the program printed, when it fails.
func MustRun(t testing.TB, env []string, dir string, name string, args ...string) string {
	t.Helper()
	c := Run(env, dir, name, args...)
	if c.Err != nil {
		t.Fatalf("command failed:\n%s", c)
	}
	return c.Stdout
}

// errStop, wrapped in a check's error, makes Eventually give up at once.
var errStop = errors.New("giving up")

// Eventually calls check until it returns nil or timeout passes, and returns
// its last error. A check returning an error that wraps errStop ends the wait
// at once.
func Eventually(timeout time.Duration, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if errors.Is(err, errStop) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}

func sortedCopy(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}

// Tmpfs mounts a tmpfs of size (such as "24m") on a new directory, to
// give a test a small filesystem to fill, and unmounts it when the test
// ends; without the right to mount (root) the test is skipped, or fails
// under E2E=require.
func Tmpfs(t testing.TB, size string) string {
	t.Helper()
	mount := LookTool(t, "mount")
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mount, "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		Missing(t, "a tmpfs mount (needs root)", fmt.Errorf("%v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}
