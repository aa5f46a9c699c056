package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// systemdUnit is what a test needs of a unit file: each key's values in
// order, from every section.
type systemdUnit map[string][]string

func readSystemdUnit(t *testing.T, path string) systemdUnit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unit := systemdUnit{}
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: a line that is no assignment: %q", path, line)
		}
		unit[key] = append(unit[key], value)
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	return unit
}

// one returns the only value of key, failing t if there is not exactly one.
func (u systemdUnit) one(t *testing.T, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("the unit has %d %s= lines, want 1", len(u[key]), key)
	}
	return u[key][0]
}

// mustNotExist fails t when path exists: the test installs the unit's files
// where the unit names them and will not touch an installation.
func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Fatalf("%s exists: this test installs the unit at its own paths and would overwrite an installation; remove it or run the test on another machine", path)
	}
}

// protectedExec is a shell script that enters what the unit's sandboxing
// options make of the file system, in a mount namespace of its own
// (unshare -m), and then executes "$@" as the unit's user: every mount
// read-only but /proc, /sys and /dev (ProtectSystem=strict) except the
// state and runtime directories (StateDirectory=, RuntimeDirectory=), an
// empty /tmp and /var/tmp (PrivateTmp=), no /home, /root or /run/user
// (ProtectHome=), the unit's UMask, no new privileges, and a bounding set
// of CAP_NET_BIND_SERVICE alone.
const protectedExec = `set -eu
state=$1 runtime=$2 workdir=$3 user=$4; shift 4
awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do
	case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
	mount -o remount,bind,ro "$m" 2>/dev/null || true
done
if touch /.cargoxx-runner-probe 2>/dev/null; then echo "/ is still writable" >&2; exit 1; fi
for d in "$state" "$runtime"; do
	mount --bind "$d" "$d"
	mount -o remount,bind,rw "$d"
done
for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$d"; done
for d in /home /root /run/user; do
	if [ -d "$d" ]; then mount -t tmpfs -o ro,mode=000 tmpfs "$d"; fi
done
cd "$workdir"
umask 077
exec setpriv --reuid="$user" --regid="$user" --init-groups --no-new-privs \
	--bounding-set=-all,+net_bind_service --inh-caps=-all -- "$@"
`

// TestSystemdUnit checks deploy/cargoxx-runner.service with systemd's own
// verifier, then installs it as its header says and runs its ExecStart and
// ExecReload lines as its user, with its environment, directories and
// sandboxing (see protectedExec), against a real Gitea and Docker: the
// runner registers, a job pushes to the cache, and a reload through the
// unit's admin socket applies a changed Caddyfile.
func TestSystemdUnit(t *testing.T) {
	docker := harness.NewDocker(t)
	analyze := harness.LookTool(t, "systemd-analyze")
	for _, tool := range []string{"unshare", "setpriv", "useradd", "userdel"} {
		harness.LookTool(t, tool)
	}
	if os.Geteuid() != 0 {
		harness.Missing(t, "root (to add the unit's user and enter its sandbox)", fmt.Errorf("running as uid %d", os.Geteuid()))
	}
	root := harness.RepoRoot(t)
	unitFile := filepath.Join(root, "deploy", "cargoxx-runner.service")
	unit := readSystemdUnit(t, unitFile)
	execStart := strings.Fields(unit.one(t, "ExecStart"))
	execReload := strings.Fields(unit.one(t, "ExecReload"))
	userName := unit.one(t, "User")
	if group := unit.one(t, "Group"); group != userName {
		t.Fatalf("the unit's Group=%s differs from User=%s; the test's install makes one group of the user's name", group, userName)
	}
	stateDir := filepath.Join("/var/lib", unit.one(t, "StateDirectory"))
	runtimeDir := filepath.Join("/run", unit.one(t, "RuntimeDirectory"))
	configDir := filepath.Join("/etc", unit.one(t, "ConfigurationDirectory"))
	workDir := unit.one(t, "WorkingDirectory")
	envFile := unit.one(t, "EnvironmentFile")
	caddyBinary := execStart[0]
	for _, path := range []string{stateDir, runtimeDir, configDir, caddyBinary} {
		mustNotExist(t, path)
	}

	// The install steps of the unit's header.
	t.Cleanup(func() {
		for _, path := range []string{stateDir, runtimeDir, configDir, caddyBinary} {
			os.RemoveAll(path)
		}
	})
	harness.MustRun(t, nil, "", "install", "-m", "0755", harness.CaddyBinary(t, "caddy"), caddyBinary)
	if c := harness.Run(nil, "", analyze, "verify", unitFile); c.Err != nil || strings.TrimSpace(c.Output) != "" {
		t.Fatalf("systemd-analyze verify finds fault with the unit:\n%s", c)
	}
	if _, err := user.Lookup(userName); err != nil {
		harness.MustRun(t, nil, "", "useradd", "--system", "--home-dir", stateDir, "--shell", "/usr/sbin/nologin",
			"--groups", strings.Join(unit["SupplementaryGroups"], ","), userName)
		t.Cleanup(func() { harness.Run(nil, "", "userdel", userName) })
	}
	account, err := user.Lookup(userName)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(account.Uid)
	gid, _ := strconv.Atoi(account.Gid)

	g, registrationToken := harness.StartGiteaWithRepo(t, "pkgs")
	port, httpsPort, reloadPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	env := strings.Join([]string{
		"GITEA_INSTANCE_URL=" + g.URL,
		"GITEA_RUNNER_REGISTRATION_TOKEN=" + registrationToken,
		"GITEA_RUNNER_NAME=cargoxx-pkgs-runner",
		"GITEA_RUNNER_LABELS=self-hosted:docker://" + docker.NixJobImage(),
		"CADDY_HTTP_PORT=" + strconv.Itoa(port),
		"CADDY_HTTPS_PORT=" + strconv.Itoa(httpsPort),
		"CACHE_DOMAIN=127.0.0.1:" + strconv.Itoa(port),
		"ACME_EMAIL=ops@example.org",
	}, "\n") + "\n"
	caddyfile := loopbackProductionCaddyfile(t)
	configFile := filepath.Join(configDir, "Caddyfile")
	harness.MustRun(t, nil, "", "install", "-d", "-m", "0750", "-g", userName, configDir)
	for path, content := range map[string]string{configFile: caddyfile, envFile: env} {
		if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 0, gid); err != nil {
			t.Fatal(err)
		}
	}
	// What systemd makes of StateDirectory= and RuntimeDirectory= before
	// ExecStart; the seed's cache key is the only file brought along.
	for dir, mode := range map[string]string{stateDir: unit.one(t, "StateDirectoryMode"), runtimeDir: unit.one(t, "RuntimeDirectoryMode")} {
		harness.MustRun(t, nil, "", "install", "-d", "-m", mode, "-o", userName, "-g", userName, dir)
	}
	harness.MustRun(t, nil, "", "install", "-d", "-m", "0700", "-o", userName, "-g", userName, filepath.Join(stateDir, "cache"))
	publicKeyFile := filepath.Join(t.TempDir(), "cache.pub")
	secretKey := filepath.Join(stateDir, "cache", "cache.sec")
	publicKey := harness.Keygen(t, "cache.example.org-1", secretKey, publicKeyFile)
	if err := os.Chown(secretKey, uid, gid); err != nil {
		t.Fatal(err)
	}

	// The service's environment: systemd's own, Environment= and
	// EnvironmentFile=.
	serviceEnv := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "USER=" + userName, "LOGNAME=" + userName}
	for _, line := range unit["Environment"] {
		serviceEnv = append(serviceEnv, strings.Fields(line)...)
	}
	serviceEnv = append(serviceEnv, strings.Fields(env)...)
	protected := func(argv []string) *exec.Cmd {
		args := append([]string{"--mount", "sh", "-c", protectedExec, "sh", stateDir, runtimeDir, workDir, userName, "env", "-i"}, serviceEnv...)
		cmd := exec.Command("unshare", append(args, argv...)...)
		cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		return cmd
	}

	logPath := filepath.Join(t.TempDir(), "service.log")
	service, err := harness.StartProcess("the unit's ExecStart", protected(execStart), logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		service.Stop(30 * time.Second)
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("the service's output:\n%s", log)
		}
	})
	cacheURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitServing(t, cacheURL+"/nix-cache-info", service.Exited)

	var processStatus syscall.Stat_t
	if err := syscall.Stat(filepath.Join(runtimeDir, "admin.sock"), &processStatus); err != nil {
		t.Fatalf("the admin socket is not in the runtime directory: %v", err)
	}
	if int(processStatus.Uid) != uid {
		t.Fatalf("the admin socket belongs to uid %d, want the unit's user %d", processStatus.Uid, uid)
	}

	deployedJobPushes(t, g, "pkgs", cacheURL, publicKey)
	if _, err := os.Stat(filepath.Join(stateDir, "data", ".runner")); err != nil {
		t.Fatalf("the registration is not in the state directory: %v", err)
	}
	verifyClean(t, filepath.Join(stateDir, "cache", "store"), publicKeyFile)

	// ExecReload, as the unit's user, through the unit's admin socket.
	if err := os.WriteFile(configFile, []byte(caddyfile+reloadedSite(reloadPort)), 0o640); err != nil {
		t.Fatal(err)
	}
	reload := protected(execReload)
	if output, err := reload.CombinedOutput(); err != nil {
		t.Fatalf("the unit's ExecReload: %v\n%s", err, output)
	}
	if status, body, err := getBody(fmt.Sprintf("http://127.0.0.1:%d/", reloadPort)); err != nil || body != "reloaded" {
		t.Fatalf("after ExecReload, the new site answers %d %q, %v", status, body, err)
	}
	if err := service.Exited(); err != nil {
		t.Fatal(err)
	}
}
