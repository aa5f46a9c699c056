// Package adapttest checks Caddyfile adaptation against snapshots, in the
// style of Caddy's own caddyfile_adapt tests: each NAME.caddyfiletest file
// holds a Caddyfile, a line of dashes, and the JSON it must adapt to.
// `go test -run Adapt -args -update` rewrites the JSON of every snapshot
// from what the adapter now produces, for review in the diff.
package adapttest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	// The Caddyfile adapter and the modules Caddyfiles name.
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

var update = flag.Bool("update", false, "rewrite the JSON of the adapt snapshots")

const separator = "\n----------\n"

// Run adapts the Caddyfile of every snapshot under dir and compares the
// JSON with the snapshot's, whole.
func Run(t *testing.T, dir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.caddyfiletest"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt snapshots in %s: %v", dir, err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddyfiletest"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, want, ok := strings.Cut(string(data), separator)
			if !ok {
				t.Fatalf("%s has no line of dashes between the Caddyfile and the JSON", file)
			}
			got := Adapt(t, caddyfile)
			if *update {
				if err := os.WriteFile(file, []byte(caddyfile+separator+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if strings.TrimSpace(got) != strings.TrimSpace(want) {
				t.Errorf("%s adapts to:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}

// Adapt adapts a Caddyfile to indented JSON, failing t on an error or a
// warning.
func Adapt(t *testing.T, caddyfile string) string {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		if !strings.Contains(w.Message, "not formatted") {
			t.Errorf("adapting warned: %s", w.String())
		}
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return pretty.String() + "\n"
}

// RunFile adapts the Caddyfile file and compares the JSON, whole, with
// the snapshot file snapshot (JSON alone), which -update rewrites.
func RunFile(t *testing.T, file, snapshot string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	got := Adapt(t, string(data))
	if *update {
		if err := os.WriteFile(snapshot, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(snapshot)
	if err != nil {
		t.Fatalf("reading the snapshot (write it with -update): %v", err)
	}
	if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
		t.Errorf("%s adapts to:\n%s\nwant (%s):\n%s", file, got, snapshot, want)
	}
}
