package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Nix runs the real nix commands with a configuration of the test's own:
// NIX_CONF_DIR, the user configuration and nix's lookup cache all live in a
// temporary directory, so tests never see each other's settings or cached
// narinfo answers. Builds go to the machine's /nix/store (nix runs as root
// without a daemon); consumers substitute into chroot stores of their own.
type Nix struct {
	t       testing.TB
	ConfDir string
	Env     []string
}

// NixConfig is the nix.conf every test starts from: no sandbox and no build
// users (the tests run as root in a container), no substituters (nothing may
// leave the machine), and the nix command enabled.
const NixConfig = `sandbox = false
build-users-group =
experimental-features = nix-command
substituters =
require-sigs = true
fsync-metadata = false
`

// NewNix checks that nix is installed and usable, and returns a handle with a
// fresh configuration. extraConf is appended to NixConfig.
func NewNix(t testing.TB, extraConf string) *Nix {
	t.Helper()
	for _, tool := range []string{"nix", "nix-build", "nix-store"} {
		LookTool(t, tool)
	}
	if _, err := os.Stat("/nix/store"); err != nil {
		Missing(t, "nix (/nix/store)", err)
	}
	dir := t.TempDir()
	confDir := filepath.Join(dir, "etc")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(confDir, "nix.conf")
	if err := os.WriteFile(conf, []byte(NixConfig+extraConf), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &Nix{
		t:       t,
		ConfDir: confDir,
		Env: []string{
			"NIX_CONF_DIR=" + confDir,
			"NIX_USER_CONF_FILES=" + conf,
			"NIX_REMOTE=",
			"XDG_CACHE_HOME=" + filepath.Join(dir, "cache"),
			"HOME=" + dir,
		},
	}
	if c := n.Run("nix-store", "--version"); c.Err != nil {
		Missing(t, "nix", fmt.Errorf("nix-store does not run: %s", c))
	}
	return n
}

// WithFreshCache returns a handle with the same configuration but its own
// empty lookup cache (binary-cache-v6.sqlite), as a separate machine would
// have. nix remembers the narinfo it uploads, unsigned, so a consumer
// sharing the uploader's lookup cache would never ask the server; and nix's
// cache database does not take concurrent writers well.
func (n *Nix) WithFreshCache() *Nix {
	fresh := &Nix{t: n.t, ConfDir: n.ConfDir, Env: slices.Clone(n.Env)}
	fresh.Env = append(fresh.Env, "XDG_CACHE_HOME="+filepath.Join(n.t.TempDir(), "cache"))
	return fresh
}

// Run runs a nix command (nix, nix-store, nix-build, …) with the test's
// configuration.
func (n *Nix) Run(name string, args ...string) Command {
	return Run(n.Env, "", name, args...)
}

// Must runs a nix command and fails the test, with its output, if it fails.
func (n *Nix) Must(name string, args ...string) string {
	n.t.Helper()
	return MustRun(n.t, n.Env, "", name, args...)
}

// Closure is a set of store paths built for a test: Top depends on the rest.
type Closure struct {
	Top   string
	Paths []string // the whole closure, Top included, sorted
}

// BuildClosure builds a small derivation graph with builtins.derivation and
// /bin/sh: a leaf, a middle path that refers to the leaf, and a top path that
// refers to both. A random nonce makes the paths new on every call. payload
// bytes of random data are added to the top path (0 for none), to make its
// NAR as large as a test needs.
func (n *Nix) BuildClosure(name string, payload int64) Closure {
	n.t.Helper()
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	expr := fmt.Sprintf(`
let
  mk = name: deps: extra: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      /bin/mkdir $out
      echo ${name} > $out/name
      for dep in ${toString deps}; do echo $dep >> $out/references; done
      ${extra}
    '' ];
    nonce = "%s";
  };
  leaf = mk "%s-leaf" [] "";
  middle = mk "%s-middle" [ leaf ] "";
in mk "%s-top" [ leaf middle ] "%s"
`, hex.EncodeToString(nonce), name, name, name, payloadCommand(payload))
	file := filepath.Join(n.t.TempDir(), "closure.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		n.t.Fatal(err)
	}
	top := strings.TrimSpace(n.Must("nix-build", file, "--no-out-link", "--quiet"))
	paths := strings.Fields(n.Must("nix-store", "--query", "--requisites", top))
	if len(paths) != 3 {
		n.t.Fatalf("closure of %s has %d paths, want 3: %v", top, len(paths), paths)
	}
	return Closure{Top: top, Paths: sortedCopy(paths)}
}

func payloadCommand(size int64) string {
	if size <= 0 {
		return ""
	}
	return fmt.Sprintf("/usr/bin/head -c %d /dev/urandom > $out/payload", size)
}

// ChrootStore returns a new, empty store directory for a consumer: pass it
// as --store so that what the consumer gets is visibly its own.
func (n *Nix) ChrootStore() string {
	return filepath.Join(n.t.TempDir(), "store")
}

// StorePaths lists the valid paths of a chroot store made by ChrootStore,
// sorted.
func (n *Nix) StorePaths(store string) []string {
	n.t.Helper()
	out := n.Must("nix", "path-info", "--store", store, "--all")
	return sortedCopy(strings.Fields(out))
}

// Copy runs `nix copy` with the given arguments and returns the result, so
// that a test can expect failure too.
func (n *Nix) Copy(args ...string) Command {
	return n.Run("nix", append([]string{"copy"}, args...)...)
}

// PathInfo runs `nix path-info` with the given arguments.
func (n *Nix) PathInfo(args ...string) Command {
	return n.Run("nix", append([]string{"path-info"}, args...)...)
}
