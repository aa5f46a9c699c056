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

// startGoSplicer builds bench/splicer and starts it on the CPUs cpus,
// serving the objects under prefix in the bucket of server, with the
// extra arguments args. It returns its port.
func startGoSplicer(b *testing.B, server *harness.S3, bucket, prefix, cpus string, args ...string) int {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "splicer")
	if out, err := exec.Command(harness.LookTool(b, "go"), "build", "-o", bin, "github.com/cargoxx-pkgs/runner/bench/splicer").CombinedOutput(); err != nil {
		b.Fatalf("building bench/splicer: %v\n%s", err, out)
	}
	port := harness.FreePort(b)
	cmd := exec.Command(harness.LookTool(b, "taskset"), append([]string{"-c", cpus, bin, "-listen", fmt.Sprintf("127.0.0.1:%d", port),
		"-endpoint", server.Endpoint, "-bucket", bucket, "-prefix", prefix}, args...)...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+server.AccessKey, "AWS_SECRET_ACCESS_KEY="+server.SecretKey)
	proc, err := harness.StartProcess("splicer", cmd, filepath.Join(dir, "splicer.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(10 * time.Second) })
	awaitListening(b, "splicer", port)
	return port
}
