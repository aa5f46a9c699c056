package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// JobImage is the tag of the busybox job image that JobImage builds.
const JobImage = "cargoxx-e2e-busybox:1"

// Docker is a Docker daemon that answers on this machine.
type Docker struct {
	t testing.TB
}

var (
	dockerdOnce sync.Once
	dockerdErr  error
	imageMu     sync.Mutex
)

// NewDocker finds a running Docker daemon. Under E2E=require, when none
// answers, it starts dockerd without its default bridge network and without
// touching iptables (`dockerd --bridge=none --iptables=false`), so that job
// containers can only use the host's loopback network.
func NewDocker(t testing.TB) *Docker {
	t.Helper()
	skipShort(t)
	LookTool(t, "docker")
	d := &Docker{t: t}
	if err := d.ping(); err != nil {
		if !Required() {
			Missing(t, "a Docker daemon", err)
		}
		dockerdOnce.Do(func() { dockerdErr = startDockerd() })
		if dockerdErr != nil {
			Missing(t, "a Docker daemon", dockerdErr)
		}
	}
	return d
}

func (d *Docker) ping() error {
	c := Run(nil, "", "docker", "info", "--format", "{{.ServerVersion}}")
	if c.Err != nil {
		return fmt.Errorf("docker info: %v: %s", c.Err, strings.TrimSpace(c.Output))
	}
	return nil
}

func startDockerd() error {
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		return fmt.Errorf("no daemon answers and dockerd is not installed: %w", err)
	}
	logPath := filepath.Join(os.TempDir(), "cargoxx-e2e-dockerd.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(dockerd, "--bridge=none", "--iptables=false")
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// The daemon outlives the test binary, as it would as a system service.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting dockerd: %w", err)
	}
	_ = cmd.Process.Release()
	d := &Docker{}
	if err := Eventually(60*time.Second, 250*time.Millisecond, d.ping); err != nil {
		return fmt.Errorf("dockerd started but does not answer (log: %s): %w", logPath, err)
	}
	return nil
}

// Run runs a docker command and returns its result.
func (d *Docker) Run(args ...string) Command {
	return Run(nil, "", "docker", args...)
}

// Must runs a docker command and fails the test, with its output, if it fails.
func (d *Docker) Must(args ...string) string {
	d.t.Helper()
	return MustRun(d.t, nil, "", "docker", args...)
}

// JobImage returns the tag of a job image made from the static busybox
// binary with `docker import`, building it if the daemon does not have it
// yet. No registry is involved.
func (d *Docker) JobImage() string {
	d.t.Helper()
	imageMu.Lock()
	defer imageMu.Unlock()
	if d.Run("image", "inspect", JobImage).Err == nil {
		return JobImage
	}
	busybox, err := findStaticBusybox()
	if err != nil {
		Missing(d.t, "busybox-static", err)
	}
	rootfs := d.t.TempDir()
	for _, dir := range []string{"bin", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(rootfs, dir), 0o755); err != nil {
			d.t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(rootfs, "tmp"), 0o1777); err != nil {
		d.t.Fatal(err)
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		d.t.Fatal(err)
	}
	applets := MustRun(d.t, nil, "", busybox, "--list")
	for _, applet := range strings.Fields(applets) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			d.t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
		"etc/hosts":  "127.0.0.1 localhost\n::1 localhost\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(content), 0o644); err != nil {
			d.t.Fatal(err)
		}
	}
	archive := filepath.Join(d.t.TempDir(), "rootfs.tar")
	MustRun(d.t, nil, "", "tar", "-C", rootfs, "-cf", archive, ".")
	d.Must("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		archive, JobImage)
	return JobImage
}

// findStaticBusybox returns the path of a statically linked busybox, which
// runs in an image that holds nothing else.
func findStaticBusybox() (string, error) {
	for _, path := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		c := Run(nil, "", "ldd", path)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		if strings.Contains(c.Output, "not a dynamic executable") {
			return path, nil
		}
	}
	return "", errors.New("no statically linked busybox in /bin or /usr/bin (Debian package busybox-static)")
}

// NixJobImage is the tag of the job image with Nix that NixJobImage builds.
const NixJobImage = "cargoxx-e2e-nix:1"

// nixImageConf is the job image's /etc/nix/nix.conf: no sandbox and no
// build users (jobs run as root in a container), and the nix command on.
const nixImageConf = `sandbox = false
build-users-group =
experimental-features = nix-command
substituters =
`

// NixJobImage returns the tag of a job image with a working nix, git-free
// and registry-free: a minimal Debian bookworm root filesystem with nix-bin
// and curl (see debianImage).
func (d *Docker) NixJobImage() string {
	d.t.Helper()
	return d.debianImage(NixJobImage, []string{"libdbi-perl", "nix-bin", "curl", "ca-certificates"},
		map[string]string{"etc/nix/nix.conf": nixImageConf})
}

// NodeJobImage is the tag of the job image with node that NodeJobImage
// builds.
const NodeJobImage = "cargoxx-e2e-node:1"

// NodeJobImage returns the tag of a job image with Debian's node and the
// tools @actions/cache archives with (GNU tar, zstd), made like
// NixJobImage.
func (d *Docker) NodeJobImage() string {
	d.t.Helper()
	return d.debianImage(NodeJobImage, []string{"nodejs", "zstd"}, nil)
}

// debianImage returns tag, building it the first time: a minimal Debian
// bookworm root filesystem made with debootstrap from Debian's packages,
// with the packages include and the files given, imported with `docker
// import`. Later calls find it in the daemon.
func (d *Docker) debianImage(tag string, include []string, files map[string]string) string {
	d.t.Helper()
	imageMu.Lock()
	defer imageMu.Unlock()
	if d.Run("image", "inspect", tag).Err == nil {
		return tag
	}
	debootstrap := LookTool(d.t, "debootstrap")
	rootfs := filepath.Join(d.t.TempDir(), "rootfs")
	d.t.Logf("building the job image %s with debootstrap (once; about a minute)", tag)
	MustRun(d.t, nil, "", debootstrap, "--variant=minbase", "--include="+strings.Join(include, ","),
		"bookworm", rootfs, "http://deb.debian.org/debian")
	for name, content := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(rootfs, name)), 0o755); err != nil {
			d.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(content), 0o644); err != nil {
			d.t.Fatal(err)
		}
	}
	archive := filepath.Join(d.t.TempDir(), "rootfs.tar")
	MustRun(d.t, nil, "", "tar", "-C", rootfs, "-cf", archive, ".")
	d.Must("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		archive, tag)
	return tag
}

// CurrentNixJobImage is the tag of the job image with current Nix that
// NixJobImageFor builds.
const CurrentNixJobImage = "cargoxx-e2e-nix-current:1"

// NixJobImageFor returns a job image with the client's nix: NixJobImage for
// the host's Nix 2.8, or for current Nix an image imported from its root
// filesystem (without its store), with the job image's nix.conf.
func (d *Docker) NixJobImageFor(client NixClient) string {
	d.t.Helper()
	if client.root == "" {
		return d.NixJobImage()
	}
	imageMu.Lock()
	defer imageMu.Unlock()
	if d.Run("image", "inspect", CurrentNixJobImage).Err == nil {
		return CurrentNixJobImage
	}
	if _, err := os.Stat(filepath.Join(client.root, "usr", "bin", "nix")); err != nil {
		Missing(d.t, "current nix (a Debian sid root with nix-bin; `make e2e-deps` builds it)", err)
	}
	conf := d.t.TempDir()
	if err := os.MkdirAll(filepath.Join(conf, "etc", "nix"), 0o755); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "etc", "nix", "nix.conf"), []byte(nixImageConf), 0o644); err != nil {
		d.t.Fatal(err)
	}
	archive := filepath.Join(d.t.TempDir(), "rootfs.tar")
	MustRun(d.t, nil, "", "tar", "-C", client.root, "-cf", archive, "--exclude=./nix", "--exclude=./etc/nix/nix.conf",
		"--exclude=./proc/*", "--exclude=./dev/*", "--exclude=./sys/*", "--exclude=./tmp/*", ".")
	MustRun(d.t, nil, "", "tar", "-C", conf, "-rf", archive, "./etc/nix/nix.conf")
	d.Must("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		archive, CurrentNixJobImage)
	return CurrentNixJobImage
}
