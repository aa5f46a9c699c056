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

// startGoSplicer builds bench/splicer and starts it on the CPUs cpus,
// serving the objects under prefix in the bucket of server, with the
// extra arguments args. It returns its port and its process.
func startGoSplicer(b *testing.B, server *harness.S3, bucket, prefix, cpus string, args ...string) (int, *harness.Process) {
	b.Helper()
	return startGoTool(b, "splicer", cpus, []string{"AWS_ACCESS_KEY_ID=" + server.AccessKey, "AWS_SECRET_ACCESS_KEY=" + server.SecretKey},
		append([]string{"-endpoint", server.Endpoint, "-bucket", bucket, "-prefix", prefix}, args...)...)
}

// startGoTool builds the command bench/name and starts it on the CPUs
// cpus with -listen on a free loopback port, the environment variables
// env and the arguments args. It returns the port and the process.
func startGoTool(b *testing.B, name, cpus string, env []string, args ...string) (int, *harness.Process) {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, name)
	if out, err := exec.Command(harness.LookTool(b, "go"), "build", "-o", bin, "github.com/cargoxx-pkgs/runner/bench/"+name).CombinedOutput(); err != nil {
		b.Fatalf("building bench/%s: %v\n%s", name, err, out)
	}
	port := harness.FreePort(b)
	cmd := exec.Command(harness.LookTool(b, "taskset"), append([]string{"-c", cpus, bin, "-listen", fmt.Sprintf("127.0.0.1:%d", port)}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	proc, err := harness.StartProcess(name, cmd, filepath.Join(dir, name+".log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop(10 * time.Second) })
	awaitListening(b, name, port)
	return port, proc
}
