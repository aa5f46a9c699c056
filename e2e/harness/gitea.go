package harness

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
)

// GiteaVersion is the Gitea release the end-to-end tests run against, built
// from the tools module in e2e/tools/gitea.
const GiteaVersion = "v1.26.0"

// The administrator that StartGitea creates.
const (
	GiteaAdmin         = "ci"
	GiteaAdminPassword = "Ci-pass-123-e2e"
)

// Gitea is a running Gitea server with Actions enabled, on a loopback port,
// with its own sqlite database in a temporary directory.
type Gitea struct {
	t       testing.TB
	Dir     string
	Port    int
	URL     string // ROOT_URL, with a trailing slash
	Token   string // an administrator's API token with every scope
	Client  *gitea.Client
	LogPath string

	binary string
	config string
	proc   *Process
}

var giteaBuildMu sync.Mutex

// GiteaBinary returns the Gitea binary, building it with `make gitea` (from
// the tools module e2e/tools/gitea) into the cache directory if it is not
// there yet, which takes about five minutes on two cores. $GITEA_BIN
// overrides the location, as the Makefile sets it.
func GiteaBinary(t testing.TB) string {
	t.Helper()
	giteaBuildMu.Lock()
	defer giteaBuildMu.Unlock()
	bin := os.Getenv("GITEA_BIN")
	if bin == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			t.Fatalf("no cache directory for the Gitea binary: %v", err)
		}
		bin = filepath.Join(cache, "cargoxx-runner", "gitea-"+GiteaVersion)
	}
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	LookTool(t, "make")
	LookTool(t, "gcc") // Gitea's sqlite driver needs cgo
	t.Logf("building Gitea %s into %s (once; later runs reuse it)", GiteaVersion, bin)
	MustRun(t, []string{"GITEA_BIN=" + bin}, RepoRoot(t), "make", "gitea")
	return bin
}

func giteaToolsDir(t testing.TB) string {
	return filepath.Join(RepoRoot(t), "e2e", "tools", "gitea")
}

var giteaSource struct {
	once sync.Once
	dir  string
	err  error
}

// giteaSourceDir is Gitea's module directory in the module cache. Without
// the bindata build tag Gitea reads its templates and locales from there.
func giteaSourceDir(t testing.TB) string {
	t.Helper()
	giteaSource.once.Do(func() {
		c := Run(nil, giteaToolsDir(t), "go", "list", "-m", "-f", "{{.Dir}}", "code.gitea.io/gitea")
		if c.Err != nil {
			giteaSource.err = fmt.Errorf("locating Gitea's source: %s", c)
			return
		}
		giteaSource.dir = strings.TrimSpace(c.Stdout)
	})
	if giteaSource.err != nil {
		t.Fatal(giteaSource.err)
	}
	return giteaSource.dir
}

// StartGitea starts a new Gitea server for the test: sqlite, Actions enabled
// with DEFAULT_ACTIONS_URL = self, an administrator (GiteaAdmin) and an API
// token with every scope. extraINI is appended to app.ini, for example to
// shorten [actions] timeouts. The server stops when the test ends, and its log
// is printed if the test failed.
func StartGitea(t testing.TB, extraINI string) *Gitea {
	t.Helper()
	skipShort(t)
	LookTool(t, "git")
	g := &Gitea{t: t, binary: GiteaBinary(t), Dir: t.TempDir(), Port: FreePort(t)}
	g.URL = fmt.Sprintf("http://127.0.0.1:%d/", g.Port)
	g.config = filepath.Join(g.Dir, "app.ini")
	g.LogPath = filepath.Join(g.Dir, "gitea.log")

	internalToken := lastWord(g.must("generate", "secret", "INTERNAL_TOKEN"))
	secretKey := lastWord(g.must("generate", "secret", "SECRET_KEY"))
	ini := fmt.Sprintf(`WORK_PATH = %[1]s
RUN_MODE = prod

[server]
HTTP_ADDR = 127.0.0.1
HTTP_PORT = %[2]d
ROOT_URL = %[3]s
DISABLE_SSH = true
OFFLINE_MODE = true
STATIC_ROOT_PATH = %[4]s
APP_DATA_PATH = %[1]s/data
LFS_START_SERVER = false

[database]
DB_TYPE = sqlite3
PATH = %[1]s/gitea.db

[security]
INSTALL_LOCK = true
INTERNAL_TOKEN = %[5]s
SECRET_KEY = %[6]s

[repository]
ROOT = %[1]s/repos
DEFAULT_BRANCH = main

[log]
MODE = console
LEVEL = Info
ROOT_PATH = %[1]s/log

[mailer]
ENABLED = false

[service]
DISABLE_REGISTRATION = true

[actions]
ENABLED = true
DEFAULT_ACTIONS_URL = self

[cron.update_checker]
ENABLED = false
`, g.Dir, g.Port, g.URL, giteaSourceDir(t), internalToken, secretKey)
	if err := os.WriteFile(g.config, []byte(ini+extraINI), 0o600); err != nil {
		t.Fatal(err)
	}
	g.must("migrate")
	g.must("admin", "user", "create", "--admin", "--username", GiteaAdmin,
		"--password", GiteaAdminPassword, "--email", GiteaAdmin+"@example.invalid",
		"--must-change-password=false")
	g.Token = lastWord(g.must("admin", "user", "generate-access-token",
		"--username", GiteaAdmin, "--token-name", "e2e", "--scopes", "all", "--raw"))

	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			data, _ := os.ReadFile(g.LogPath)
			t.Logf("gitea log (%s):\n%s", g.LogPath, data)
		}
	})
	g.Start()
	g.connect()
	return g
}

// connect points the SDK client at the server's address.
func (g *Gitea) connect() {
	g.t.Helper()
	client, err := gitea.NewClient(strings.TrimSuffix(g.URL, "/"), gitea.SetToken(g.Token),
		gitea.SetGiteaVersion(strings.TrimPrefix(GiteaVersion, "v")))
	if err != nil {
		g.t.Fatalf("connecting the Gitea SDK to %s: %v", g.URL, err)
	}
	g.Client = client
}

// Move restarts the server with its data on another port, as when Gitea
// moves to a new address: what was cloned from the old one points nowhere.
func (g *Gitea) Move() {
	g.t.Helper()
	g.Stop()
	oldURL, oldPort := g.URL, g.Port
	g.Port = FreePort(g.t)
	g.URL = fmt.Sprintf("http://127.0.0.1:%d/", g.Port)
	ini, err := os.ReadFile(g.config)
	if err != nil {
		g.t.Fatal(err)
	}
	moved := strings.Replace(string(ini), fmt.Sprintf("HTTP_PORT = %d\n", oldPort), fmt.Sprintf("HTTP_PORT = %d\n", g.Port), 1)
	moved = strings.Replace(moved, "ROOT_URL = "+oldURL+"\n", "ROOT_URL = "+g.URL+"\n", 1)
	if err := os.WriteFile(g.config, []byte(moved), 0o600); err != nil {
		g.t.Fatal(err)
	}
	g.Start()
	g.connect()
}

// lastWord is the last word of a gitea command's output: running
// as root, gitea prints a warning on standard output before the answer.
func lastWord(output string) string {
	lines := strings.Fields(strings.TrimSpace(output))
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1]
}

// env is the environment every gitea command runs with.
func (g *Gitea) env() []string {
	return []string{
		"GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true",
		"GITEA_WORK_DIR=" + g.Dir,
		"HOME=" + g.Dir,
	}
}

// must runs a gitea CLI command against this server's configuration.
func (g *Gitea) must(args ...string) string {
	g.t.Helper()
	return MustRun(g.t, g.env(), g.Dir, g.binary, append([]string{"--config", g.config}, args...)...)
}

// Start (re)starts the web server and waits until /api/healthz answers.
func (g *Gitea) Start() {
	g.t.Helper()
	cmd := exec.Command(g.binary, "--config", g.config, "web")
	cmd.Dir = g.Dir
	cmd.Env = append(os.Environ(), g.env()...)
	proc, err := StartProcess("gitea", cmd, g.LogPath)
	if err != nil {
		g.t.Fatal(err)
	}
	g.proc = proc
	err = Eventually(120*time.Second, 200*time.Millisecond, func() error {
		if err := proc.Exited(); err != nil {
			return err
		}
		resp, err := http.Get(g.URL + "api/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz answered %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		data, _ := os.ReadFile(g.LogPath)
		cfg, _ := os.ReadFile(g.config)
		g.t.Fatalf("gitea did not become ready: %v\nlog:\n%s\napp.ini:\n%s", err, data, cfg)
	}
}

// Stop ends the server (SIGTERM, then SIGKILL after 30 seconds).
func (g *Gitea) Stop() {
	if g.proc == nil {
		return
	}
	g.proc.Stop(30 * time.Second)
	g.proc = nil
}
