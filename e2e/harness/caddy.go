package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// CaddyOptions tunes StartCaddy. The zero value starts bin/caddy in a new
// temporary directory.
type CaddyOptions struct {
	// Binary is the caddy binary to run. Default: bin/caddy of this repository.
	Binary string
	// Dir is the working directory, against which relative paths in the
	// Caddyfile resolve. Default: a new temporary directory.
	Dir string
	// Env holds extra environment variables (KEY=value) for the process.
	Env []string
	// NoHTTP says the configuration serves no HTTP site, so StartCaddy waits
	// only for the admin endpoint.
	NoHTTP bool
	// TCPAdmin puts the admin endpoint on a loopback port instead of a unix
	// socket.
	TCPAdmin bool
}

// Caddy is a running caddy process.
//
// The Caddyfile it runs can use the environment placeholders {$CADDY_HTTP_PORT}
// and {$CADDY_HTTPS_PORT}, which StartCaddy sets to free loopback ports, so
// tests never collide on a port, and {$CADDY_ADMIN}, a unix socket of the
// test's own (a loopback port with TCPAdmin), as a deployment that runs
// jobs has it.
type Caddy struct {
	t         testing.TB
	opts      CaddyOptions
	Dir       string
	Config    string // path of the Caddyfile
	HTTPPort  int
	HTTPSPort int
	Admin     string // the admin endpoint's address, as in `admin ADDRESS`
	LogPath   string

	proc *Process
}

// AdminSocket returns a unix socket address, unix//PATH, in a new
// directory short enough for a socket's path limit.
func AdminSocket(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "caddy-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return "unix/" + filepath.Join(dir, "admin.sock")
}

// AdminClient returns an HTTP client that reaches the admin endpoint
// address (unix//PATH or HOST:PORT) whatever the URL's host, and the base
// URL to use with it.
func AdminClient(address string) (*http.Client, string) {
	socket, ok := strings.CutPrefix(address, "unix/")
	if !ok {
		return http.DefaultClient, "http://" + address
	}
	transport := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}
	return &http.Client{Transport: transport}, "http://caddy-admin"
}

// AdminDo sends a request to the admin endpoint, e.g.
// AdminDo("GET", "/config/", nil).
func (c *Caddy) AdminDo(method, path string, body io.Reader) (*http.Response, error) {
	client, base := AdminClient(c.Admin)
	req, err := http.NewRequest(method, base+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "text/caddyfile")
	}
	return client.Do(req)
}

// AdminURL is the URL of path on the admin endpoint, for clients that
// cannot dial a unix socket; only with TCPAdmin.
func (c *Caddy) AdminURL(path string) string {
	_, base := AdminClient(c.Admin)
	return base + path
}

// CaddyBinary returns the path of bin/caddy, or skips (fails under
// E2E=require) when it has not been built.
func CaddyBinary(t testing.TB, name string) string {
	t.Helper()
	skipShort(t)
	path := filepath.Join(RepoRoot(t), "bin", name)
	if _, err := os.Stat(path); err != nil {
		Missing(t, "bin/"+name+" (run `make build xcaddy`)", err)
	}
	return path
}

// StartCaddy writes caddyfile into a working directory and runs caddy on
// it, waiting until the admin endpoint and the HTTP port answer. The process
// is stopped when the test ends, and its log is printed if the test failed.
func StartCaddy(t testing.TB, caddyfile string, opts CaddyOptions) *Caddy {
	t.Helper()
	if opts.Binary == "" {
		opts.Binary = CaddyBinary(t, "caddy")
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	c := &Caddy{
		t:         t,
		opts:      opts,
		Dir:       opts.Dir,
		Config:    filepath.Join(opts.Dir, "Caddyfile"),
		HTTPPort:  FreePort(t),
		HTTPSPort: FreePort(t),
		LogPath:   filepath.Join(opts.Dir, "caddy.log"),
	}
	if opts.TCPAdmin {
		c.Admin = "127.0.0.1:" + strconv.Itoa(FreePort(t))
	} else {
		c.Admin = AdminSocket(t)
	}
	if err := os.WriteFile(c.Config, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			c.dumpLog()
		}
	})
	c.Start()
	return c
}

// Start (re)starts the process on the same directory, ports and Caddyfile.
func (c *Caddy) Start() {
	c.t.Helper()
	cmd := exec.Command(c.opts.Binary, "run", "--config", c.Config, "--adapter", "caddyfile")
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(),
		"CADDY_HTTP_PORT="+strconv.Itoa(c.HTTPPort),
		"CADDY_HTTPS_PORT="+strconv.Itoa(c.HTTPSPort),
		"CADDY_ADMIN="+c.Admin,
		// Keep Caddy's storage and autosaved config inside the test.
		"XDG_DATA_HOME="+filepath.Join(c.Dir, "xdg-data"),
		"XDG_CONFIG_HOME="+filepath.Join(c.Dir, "xdg-config"),
	)
	cmd.Env = append(cmd.Env, c.opts.Env...)
	proc, err := StartProcess("caddy", cmd, c.LogPath)
	if err != nil {
		c.t.Fatal(err)
	}
	c.proc = proc

	err = Eventually(30*time.Second, 50*time.Millisecond, func() error {
		if err := proc.Exited(); err != nil {
			return err
		}
		resp, err := c.AdminDo(http.MethodGet, "/config/", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("admin endpoint answered %s", resp.Status)
		}
		if c.opts.NoHTTP {
			return nil
		}
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort), time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		c.dumpLog()
		c.t.Fatalf("caddy did not become ready: %v", err)
	}
}

// URL is the base URL of the plain-HTTP port, without a trailing slash.
func (c *Caddy) URL() string {
	return fmt.Sprintf("http://127.0.0.1:%d", c.HTTPPort)
}

// Reload replaces the running configuration with caddyfile through the
// admin API, as `caddy reload` does, and returns the admin endpoint's error.
func (c *Caddy) Reload(caddyfile string) error {
	if err := os.WriteFile(c.Config, []byte(caddyfile), 0o644); err != nil {
		return err
	}
	resp, err := c.AdminDo(http.MethodPost, "/load", strings.NewReader(caddyfile))
	if err != nil {
		return fmt.Errorf("reloading caddy: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reloading caddy: %s: %s", resp.Status, body)
	}
	return nil
}

// Stop ends the process gracefully, killing it if it does not exit within
// 30 seconds. Stopping a stopped process does nothing.
func (c *Caddy) Stop() {
	if c.proc == nil {
		return
	}
	c.proc.Stop(30 * time.Second)
	c.proc = nil
}

// Terminate sends SIGTERM, as systemd or docker stop do, and reports
// whether the process ended within grace; it is killed otherwise.
func (c *Caddy) Terminate(grace time.Duration) bool {
	if c.proc == nil {
		return true
	}
	ended := c.proc.Stop(grace)
	c.proc = nil
	return ended
}

// WaitExit waits up to timeout for caddy to end by itself and returns its
// exit error (nil for status 0); ok is false if it still runs.
func (c *Caddy) WaitExit(timeout time.Duration) (err error, ok bool) {
	if c.proc == nil {
		c.t.Fatal("caddy is not running")
	}
	if err, ok = c.proc.Wait(timeout); ok {
		c.proc = nil
	}
	return err, ok
}

// Kill ends the process at once with SIGKILL, as a crash would.
func (c *Caddy) Kill() {
	if c.proc == nil {
		return
	}
	c.proc.Kill()
	c.proc = nil
}

// PID is the running process's id.
func (c *Caddy) PID() int {
	return c.proc.PID()
}

// Log returns what the process has logged so far.
func (c *Caddy) Log() string {
	data, _ := os.ReadFile(c.LogPath)
	return string(data)
}

func (c *Caddy) dumpLog() {
	c.t.Logf("caddy log (%s):\n%s", c.LogPath, c.Log())
}
