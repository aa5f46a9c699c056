package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// startSplicingProxy starts haproxy, one thread on the CPUs cpus, passing
// HTTP requests to backend (host:port) over kept-alive connections and
// their responses back with splice(2), the kernel moving the bytes from
// socket to socket: as little as any proxy can do for a response. It
// returns its port.
func startSplicingProxy(b *testing.B, backend, cpus string) int {
	b.Helper()
	haproxy := harness.LookTool(b, "haproxy")
	dir := b.TempDir()
	port := harness.FreePort(b)
	conf := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`global
	nbthread 1
	maxconn 1024
defaults
	mode http
	option splice-response
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 60s
	timeout server 60s
frontend nars
	bind 127.0.0.1:%d
	default_backend s3
backend s3
	server s3 %s
`, port, backend)), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(harness.LookTool(b, "taskset"), "-c", cpus, haproxy, "-db", "-f", conf)
	proc, err := harness.StartProcess("haproxy", cmd, filepath.Join(dir, "haproxy.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(10 * time.Second) })
	awaitListening(b, "haproxy", port)
	return port
}
