package runner

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

// FuzzAdaptCaddyfile adapts arbitrary Caddyfiles, starting from the
// shipped ones and every adapt snapshot of this bundle's directives
// (nix_cache, gitea_runner, gitea_runner_webhook, actions_cache,
// host_status): their parsers never panic, and what adapts is JSON.
func FuzzAdaptCaddyfile(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("caddyfiles", "*.Caddyfile"))
	snapshots, _ := filepath.Glob(filepath.Join("*", "testdata", "*.caddyfiletest"))
	nested, _ := filepath.Glob(filepath.Join("*", "*", "testdata", "*.caddyfiletest"))
	for _, file := range append(append(seeds, snapshots...), nested...) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		caddyfileText, _, _ := strings.Cut(string(data), "\n----------\n")
		f.Add(caddyfileText)
	}
	if len(seeds) == 0 || len(snapshots) == 0 {
		f.Fatal("no Caddyfiles to start from")
	}
	f.Fuzz(func(t *testing.T, text string) {
		if strings.Contains(text, "import") {
			// import reads files and globs the filesystem: a pattern
			// such as /p*/* would block on /proc/kmsg.
			return
		}
		adapted, _, err := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt([]byte(text), map[string]any{"filename": "Caddyfile"})
		if err != nil {
			return
		}
		if !json.Valid(adapted) {
			t.Fatalf("adapted to something that is not JSON:\n%s", adapted)
		}
	})
}
