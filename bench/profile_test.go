package bench

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// profiling reports whether BENCH_PROFILES asks for profiles. Profiling
// slows the profiled process down, so profiles are taken in extra rounds
// that the report does not count.
func profiling() bool { return os.Getenv("BENCH_PROFILES") != "" }

// profileCaddy starts taking a CPU profile of the caddy process at the
// admin endpoint address admin for dur when BENCH_PROFILES names a directory, and returns a
// function that waits for it and also saves a heap profile. Both land in
// that directory as <name>.cpu.pprof and <name>.heap.pprof, for
// `go tool pprof bin/caddy <file>`. Without BENCH_PROFILES it does nothing.
func profileCaddy(b *testing.B, admin, name string, dur time.Duration) (wait func()) {
	b.Helper()
	if !profiling() {
		return func() {}
	}
	dir := os.Getenv("BENCH_PROFILES")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	client, base := harness.AdminClient(admin)
	base += "/debug/pprof/"
	done := make(chan error, 1)
	go func() {
		done <- savePprof(client, fmt.Sprintf("%sprofile?seconds=%d", base, int(dur.Seconds())), filepath.Join(dir, name+".cpu.pprof"))
	}()
	return func() {
		if err := <-done; err != nil {
			b.Errorf("CPU profile of %s: %v", name, err)
		}
		if err := savePprof(client, base+"heap", filepath.Join(dir, name+".heap.pprof")); err != nil {
			b.Errorf("heap profile of %s: %v", name, err)
		}
	}
}

func savePprof(client *http.Client, url, file string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, data, 0o644)
}
