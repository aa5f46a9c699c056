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

// Nix runs the real nix commands of one client with a configuration of the
// test's own: NIX_CONF_DIR, the user configuration and nix's lookup cache
// all live in a temporary directory, so tests never see each other's
// settings or cached narinfo answers. Builds go to the client's /nix/store
// (nix runs as root without a daemon); consumers substitute into chroot
// stores of their own.
type Nix struct {
	t       testing.TB
	client  NixClient
	ConfDir string
	Env     []string
}

// NixClient is one Nix the tests run: Debian bookworm's Nix 2.8 on the
// host, or Debian sid's current Nix in a root filesystem of its own.
type NixClient struct {
	// Name names the client in subtests: nix-2.8 or nix-current.
	Name string
	// root is the root filesystem nix runs in; "" for the host's.
	root string
}

// Nix28 is the host's Nix, Debian bookworm's 2.8.
var Nix28 = NixClient{Name: "nix-2.8"}

// NixCurrent is Debian sid's Nix in the root filesystem NIX_CURRENT_ROOT
// names (default ~/.cache/cargoxx-runner/nix-sid), which `make e2e-deps`
// builds with e2e/tools/nix-current-root.
func NixCurrent() NixClient {
	root := os.Getenv("NIX_CURRENT_ROOT")
	if root == "" {
		home, _ := os.UserHomeDir()
		root = filepath.Join(home, ".cache", "cargoxx-runner", "nix-sid")
	}
	return NixClient{Name: "nix-current", root: root}
}

// ForEachNix runs test once for each client, as a subtest named after it.
func ForEachNix(t *testing.T, test func(t *testing.T, client NixClient)) {
	for _, client := range []NixClient{Nix28, NixCurrent()} {
		t.Run(client.Name, func(t *testing.T) { test(t, client) })
	}
}

// New checks that the client's nix is usable and returns a handle with a
// fresh configuration; extraConf is appended to NixConfig.
func (c NixClient) New(t testing.TB, extraConf string) *Nix {
	t.Helper()
	return newNix(t, c, extraConf)
}

// Netrc is New with a netrc file that presents token to 127.0.0.1, as a
// CI job uploading to a cache would be.
func (c NixClient) Netrc(t testing.TB, token string) *Nix {
	t.Helper()
	netrc := filepath.Join(t.TempDir(), "netrc")
	if err := os.WriteFile(netrc, []byte("machine 127.0.0.1 login nix password "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c.New(t, "netrc-file = "+netrc+"\n")
}

// Root is the root filesystem the client runs in, "" for the host's.
func (c NixClient) Root() string { return c.root }

// StoreDir is where the paths the client builds are, seen from the host:
// /nix/store in the client's root filesystem.
func (c NixClient) StoreDir() string { return filepath.Join(c.root, "/nix/store") }

// inRoot runs a command in a root filesystem: in a mount namespace of its
// own (so nothing stays mounted), with /proc, /dev (pseudo-terminals
// included: nix's builder needs one) and the temporary directory, where
// tests keep every file nix reads or writes, at the same paths inside.
const inRoot = `root=$1 tmp=$2
shift 2
mount -t proc proc "$root/proc" &&
	mount --rbind /dev "$root/dev" &&
	mkdir -p "$root$tmp" &&
	mount --bind "$tmp" "$root$tmp" &&
	exec chroot "$root" "$@"`

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

// NewNix checks that the host's nix (Nix28) is usable and returns a handle
// with a fresh configuration. extraConf is appended to NixConfig.
func NewNix(t testing.TB, extraConf string) *Nix {
	t.Helper()
	return newNix(t, Nix28, extraConf)
}

func newNix(t testing.TB, client NixClient, extraConf string) *Nix {
	t.Helper()
	skipShort(t)
	if client.root == "" {
		for _, tool := range []string{"nix", "nix-build", "nix-store"} {
			LookTool(t, tool)
		}
		if _, err := os.Stat("/nix/store"); err != nil {
			Missing(t, "nix (/nix/store)", err)
		}
	} else {
		for _, tool := range []string{"unshare", "chroot", "mount"} {
			LookTool(t, tool)
		}
		if _, err := os.Stat(filepath.Join(client.root, "usr", "bin", "nix")); err != nil {
			Missing(t, "current nix (a Debian sid root with nix-bin; `make e2e-deps` builds it)", err)
		}
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
		client:  client,
		ConfDir: confDir,
		Env: []string{
			"NIX_CONF_DIR=" + confDir,
			"NIX_USER_CONF_FILES=" + conf,
			"NIX_REMOTE=",
			"XDG_CACHE_HOME=" + filepath.Join(dir, "cache"),
			"HOME=" + dir,
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
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
	fresh := &Nix{t: n.t, client: n.client, ConfDir: n.ConfDir, Env: slices.Clone(n.Env)}
	fresh.Env = append(fresh.Env, "XDG_CACHE_HOME="+filepath.Join(n.t.TempDir(), "cache"))
	return fresh
}

// Run runs a nix command (nix, nix-store, nix-build, …) with the test's
// configuration.
func (n *Nix) Run(name string, args ...string) Command {
	if n.client.root == "" {
		return Run(n.Env, "", name, args...)
	}
	wrapped := append([]string{"--mount", "--propagation", "private", "--", "sh", "-c", inRoot, "sh", n.client.root, os.TempDir(), name}, args...)
	c := Run(n.Env, "", "unshare", wrapped...)
	c.Args = append([]string{"chroot", n.client.root, name}, args...)
	return c
}

// Client is the Nix this handle runs.
func (n *Nix) Client() NixClient { return n.client }

// Must runs a nix command and fails the test, with its output, if it fails.
func (n *Nix) Must(name string, args ...string) string {
	n.t.Helper()
	c := n.Run(name, args...)
	if c.Err != nil {
		n.t.Fatalf("command failed:\n%s", c)
	}
	return c.Stdout
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
	return n.buildClosure(name, `"`+payloadCommand(payload)+`"`)
}

// buildClosure builds a leaf, a middle path that refers to the leaf, and a
// top path that refers to both and also runs topExtra, a Nix string
// expression of shell commands in which leaf and middle are bound.
func (n *Nix) buildClosure(name, topExtra string) Closure {
	n.t.Helper()
	top := strings.TrimSpace(n.build(fmt.Sprintf(`
  leaf = mk "%s-leaf" [] "";
  middle = mk "%s-middle" [ leaf ] "";
in mk "%s-top" [ leaf middle ] %s
`, name, name, name, topExtra)))
	paths := strings.Fields(n.Must("nix-store", "--query", "--requisites", top))
	if len(paths) != 3 {
		n.t.Fatalf("closure of %s has %d paths, want 3: %v", top, len(paths), paths)
	}
	return Closure{Top: top, Paths: sortedCopy(paths)}
}

// BuildFileKinds is BuildClosure with a top path that holds every kind
// of file a NAR records: an executable, an empty file, an empty
// directory, nested directories, and symlinks, relative, absolute and
// to another store path.
func (n *Nix) BuildFileKinds(name string) Closure {
	n.t.Helper()
	return n.buildClosure(name, `''
  printf '#!/bin/sh\necho hello\n' > $out/run
  /bin/chmod 0555 $out/run
  : > $out/empty
  /bin/mkdir -p $out/empty-dir $out/share/doc/deeper
  echo nested > $out/share/doc/deeper/file
  /bin/ln -s run $out/run-link
  /bin/ln -s ../name $out/share/up-link
  /bin/ln -s ${leaf} $out/leaf-link
  /bin/ln -s /nonexistent $out/dangling
''`)
}

// BuildSharedClosures builds n closures that share one path: the i-th top
// path references a base path common to all and a leaf of its own, and
// carries payload bytes of random data. It returns the top paths in order
// and the base path.
func (n *Nix) BuildSharedClosures(name string, count int, payload int64) (tops []string, base string) {
	n.t.Helper()
	return n.buildSharedClosures(name, count, "", `"`+payloadCommand(payload)+`"`)
}

// buildSharedClosures builds count closures that share a base path, each
// top path also running topExtra, a Nix string expression of shell
// commands in which i is the top path's number and bindings are bound.
func (n *Nix) buildSharedClosures(name string, count int, bindings, topExtra string) (tops []string, base string) {
	n.t.Helper()
	out := strings.Fields(n.build(fmt.Sprintf(`%s
  base = mk "%s-base" [] "";
  top = i: mk "%s-top-${toString i}" [ base (mk "%s-leaf-${toString i}" [] "") ] %s;
in [ base ] ++ builtins.genList top %d
`, bindings, name, name, name, topExtra, count)))
	if len(out) != count+1 {
		n.t.Fatalf("nix-build of %d shared closures printed %d paths", count, len(out))
	}
	return out[1:], out[0]
}

// BuildSharedClosuresFrom is BuildSharedClosures with each top path's
// payload cut from the file source at an offset of its own rather than
// random, so that NARs compress as source does (shared libraries, say).
// source must be larger than payload; the builder reads it (no sandbox).
func (n *Nix) BuildSharedClosuresFrom(name string, count int, payload int64, source string) (tops []string, base string) {
	n.t.Helper()
	info, err := os.Stat(source)
	if err != nil || info.Size() <= payload {
		n.t.Fatalf("payload source %s must be larger than %d bytes: %v", source, payload, err)
	}
	offsets := make([]string, count)
	for i := range offsets {
		offsets[i] = fmt.Sprint(int64(i)*7919*1024%(info.Size()-payload) + 1)
	}
	return n.buildSharedClosures(name, count, "  offsets = [ "+strings.Join(offsets, " ")+" ];",
		fmt.Sprintf(`"/usr/bin/tail -c +${toString (builtins.elemAt offsets i)} %s | /usr/bin/head -c %d > $out/payload"`, source, payload))
}

// build runs nix-build on the bindings and body given, after a `let` that
// defines mk: a derivation built by /bin/sh that records its name and its
// dependencies (so they become references) and runs extra, with a random
// nonce that makes its paths new on every call. It returns nix-build's
// output, the paths built.
func (n *Nix) build(rest string) string {
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
      echo "building ${name}"
      /bin/mkdir $out
      echo ${name} > $out/name
      for dep in ${toString deps}; do echo $dep >> $out/references; done
      ${extra}
    '' ];
    nonce = "%s";
  };
`, hex.EncodeToString(nonce)) + rest
	file := filepath.Join(n.t.TempDir(), "build.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		n.t.Fatal(err)
	}
	return n.Must("nix-build", file, "--no-out-link", "--quiet")
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
