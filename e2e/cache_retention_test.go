package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// retentionCaddyfile serves root with uploads and a retention block whose
// interval is long: the tests collect through the admin endpoint.
func retentionCaddyfile(root, secret string) string {
	options := append([]string{"name main"}, harness.CacheOptions(root, secret)...)
	return harness.Caddyfile{Cache: &harness.CacheSite{
		Options: append(options, "retention {\n\tmax_size 10GiB\n\tinterval 24h\n}"),
		Upload:  []string{"token " + uploadToken},
	}}.String()
}

// nixCache runs `caddy nix-cache args…` and decodes its JSON answer into
// out; it returns the command's result so that refusals can be checked.
func nixCache(t *testing.T, out any, args ...string) harness.Command {
	t.Helper()
	c := harness.Run(nil, "", harness.CaddyBinary(t, "caddy"), append([]string{"nix-cache"}, args...)...)
	if c.Err == nil && out != nil {
		if err := json.Unmarshal([]byte(c.Stdout), out); err != nil {
			t.Fatalf("caddy nix-cache %s printed no JSON: %v\n%s", strings.Join(args, " "), err, c)
		}
	}
	return c
}

type gcAnswer struct {
	Deleted    []string `json:"deleted"`
	Overlays   []string `json:"overlays_dropped"`
	SizeBefore int64    `json:"size_before"`
	SizeAfter  int64    `json:"size_after"`
	Protected  int64    `json:"protected_bytes"`
}

func narinfoURL(cacheURL, storePath string) string {
	return cacheURL + "/" + strings.SplitN(filepath.Base(storePath), "-", 2)[0] + ".narinfo"
}

func TestRetentionKeepsWholeClosures(t *testing.T) {
	nix := harness.NetrcNix(t, uploadToken)
	root := filepath.Join(t.TempDir(), "cache")
	secret, public := keygen(t, "retention-1")
	publicFile := filepath.Join(t.TempDir(), "cache.pub")
	if err := os.WriteFile(publicFile, []byte(public+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	caddy := harness.StartCaddy(t, retentionCaddyfile(root, secret), harness.CaddyOptions{})
	admin := "--address=" + caddy.Admin

	// 40 closures sharing one base path, pushed long before the first
	// five are served.
	tops, base := nix.BuildSharedClosures("retention", 40, 64<<10)
	if c := nix.Copy(append([]string{"--to", caddy.URL()}, tops...)...); c.Err != nil {
		t.Fatalf("nix copy --to %s:\n%s", caddy.URL(), c)
	}
	time.Sleep(1100 * time.Millisecond)
	served, pinned := tops[:5], tops[5]
	for _, top := range served {
		get(t, narinfoURL(caddy.URL(), top), nil, 200)
	}
	if c := nixCache(t, nil, "pin", "add", "release", pinned, admin); c.Err != nil {
		t.Fatalf("pin add:\n%s", c)
	}
	if c := nixCache(t, nil, "pin", "add", "bad name", pinned, admin); c.Err == nil || !strings.Contains(c.Output, "not allowed") {
		t.Fatalf("pin add with a malformed name:\n%s", c)
	}
	if c := nixCache(t, nil, "pin", "add", "ghost", "/nix/store/00000000000000000000000000000000-ghost", admin); c.Err == nil || !strings.Contains(c.Output, "does not hold") {
		t.Fatalf("pin add of an unknown path:\n%s", c)
	}

	var dry gcAnswer
	if c := nixCache(t, &dry, "gc", "--dry-run", "--min-age", "0s", admin); c.Err != nil {
		t.Fatalf("gc --dry-run:\n%s", c)
	}
	if len(dry.Deleted) != 0 || dry.SizeBefore == 0 {
		t.Fatalf("a dry run under max_size plans %d deletions of %d bytes", len(dry.Deleted), dry.SizeBefore)
	}
	maxSize := dry.SizeBefore / 2
	var gc gcAnswer
	if c := nixCache(t, &gc, "gc", "--max-size", fmt.Sprint(maxSize), "--min-age", "0s", admin); c.Err != nil {
		t.Fatalf("gc:\n%s", c)
	}
	if gc.SizeAfter > maxSize || len(gc.Deleted) == 0 {
		t.Fatalf("after gc with max_size %d: %d bytes, %d paths deleted", maxSize, gc.SizeAfter, len(gc.Deleted))
	}
	t.Logf("gc deleted %d paths, %d → %d bytes (max %d)", len(gc.Deleted), gc.SizeBefore, gc.SizeAfter, maxSize)
	verifyClean(t, root, publicFile)
	if page := get(t, caddy.URL()+"/", nil, 200); !strings.Contains(page, "retention: ") || !strings.Contains(page, "of max_size 10 GiB (0%)") {
		t.Errorf("the landing page does not show the size against max_size:\n%s", page)
	}

	// The served and pinned closures are kept, whole; so is what they
	// share with everything.
	for _, top := range append(append([]string{}, served...), pinned) {
		if c, store := substitute(nix, caddy.URL(), public, top); c.Err != nil {
			t.Fatalf("substituting kept %s:\n%s", top, c)
		} else if got := nix.StorePaths(store); len(got) != 3 {
			t.Fatalf("the closure of %s substituted as %v", top, got)
		}
	}
	get(t, narinfoURL(caddy.URL(), base), nil, 200)
	for _, gone := range gc.Deleted {
		get(t, narinfoURL(caddy.URL(), gone), nil, 404)
		if gone == base {
			t.Fatalf("the base every kept closure needs was deleted")
		}
	}

	var info struct {
		Pusher     struct{ Token string } `json:"pusher"`
		LastServed *time.Time             `json:"last_served"`
		Pins       []string               `json:"pins"`
		References []string               `json:"references"`
	}
	if c := nixCache(t, &info, "path-info", pinned, admin); c.Err != nil {
		t.Fatalf("path-info:\n%s", c)
	}
	if info.Pusher.Token != "token 1" || len(info.Pins) != 1 || len(info.References) != 2 {
		t.Fatalf("path-info of the pinned path: %+v", info)
	}
	if c := nixCache(t, &info, "path-info", served[0], admin); c.Err != nil || info.LastServed == nil {
		t.Fatalf("path-info of a served path has no last_served:\n%s", c)
	}

	// delete refuses what kept paths need, and deletes a top path.
	if c := nixCache(t, nil, "delete", base, admin); c.Err == nil || !strings.Contains(c.Output, "--with-referrers") {
		t.Fatalf("delete of the shared base:\n%s", c)
	}
	if c := nixCache(t, nil, "delete", pinned, admin); c.Err == nil || !strings.Contains(c.Output, "pinned") {
		t.Fatalf("delete of a pinned path:\n%s", c)
	}
	if c := nixCache(t, nil, "delete", served[0], admin); c.Err != nil {
		t.Fatalf("delete of a top path:\n%s", c)
	}
	get(t, narinfoURL(caddy.URL(), served[0]), nil, 404)
	verifyClean(t, root, publicFile)

	// A lost index is rebuilt from the files when caddy starts, and
	// plans what the lost one planned: pins, served times and push times
	// are in the files too.
	deeper := gc.SizeAfter / 2
	var planned gcAnswer
	if c := nixCache(t, &planned, "gc", "--dry-run", "--max-size", fmt.Sprint(deeper), "--min-age", "0s", admin); c.Err != nil {
		t.Fatalf("gc --dry-run:\n%s", c)
	}
	caddy.Stop()
	indexes, _ := filepath.Glob(filepath.Join(caddy.Dir, "xdg-data", "caddy", "nix_cache", "index-*.db"))
	if len(indexes) != 1 {
		t.Fatalf("index files under caddy's data directory: %v", indexes)
	}
	if err := os.Remove(indexes[0]); err != nil {
		t.Fatal(err)
	}
	caddy.Start()
	var again gcAnswer
	if c := nixCache(t, &again, "gc", "--dry-run", "--max-size", fmt.Sprint(deeper), "--min-age", "0s", admin); c.Err != nil {
		t.Fatalf("gc --dry-run after the index was lost:\n%s", c)
	}
	if len(planned.Deleted) == 0 || !slices.Equal(again.Deleted, planned.Deleted) {
		t.Fatalf("with the index: %d deletions planned %v\nafter it was lost: %v", len(planned.Deleted), planned.Deleted, again.Deleted)
	}
	for _, kept := range append(append([]string{}, served[1:]...), pinned) {
		if slices.Contains(planned.Deleted, kept) {
			t.Fatalf("a deeper collection would delete the served or pinned %s", kept)
		}
	}
}

// TestGCOfWhatNixCopyWrote collects a directory written by `nix copy --to
// file://` alone, offline, and serves what is left.
func TestGCOfWhatNixCopyWrote(t *testing.T) {
	nix := harness.NewNix(t, "")
	root := filepath.Join(t.TempDir(), "cache")
	tops, _ := nix.BuildSharedClosures("filecopy", 6, 32<<10)
	if c := nix.Copy(append([]string{"--to", "file://" + root}, tops...)...); c.Err != nil {
		t.Fatalf("nix copy --to file://:\n%s", c)
	}
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	var gc gcAnswer
	time.Sleep(2 * time.Second)
	if c := nixCache(t, &gc, "gc", "--root", root, "--max-age", "1s", "--min-age", "0s", "--dry-run"); c.Err != nil || len(gc.Deleted) != 6*2+1 {
		t.Fatalf("gc --dry-run once everything is older than max_age plans %d deletions, want %d:\n%s", len(gc.Deleted), 6*2+1, c)
	}
	var pin any
	if c := nixCache(t, &pin, "pin", "add", "keep", tops[0], "--root", root); c.Err != nil {
		t.Fatalf("pin add --root:\n%s", c)
	}
	if c := nixCache(t, &gc, "gc", "--root", root, "--max-age", "1s", "--min-age", "0s"); c.Err != nil || len(gc.Deleted) != 5*2 {
		t.Fatalf("gc with one pinned closure deleted %d paths, want %d:\n%s", len(gc.Deleted), 5*2, c)
	}
	secret, public := keygen(t, "filecopy-1")
	caddy := harness.StartCaddy(t, harness.UploadCache(root, secret, uploadToken).String(), harness.CaddyOptions{})
	if c, store := substitute(nix, caddy.URL(), public, tops[0]); c.Err != nil {
		t.Fatalf("substituting the pinned closure:\n%s", c)
	} else if got := nix.StorePaths(store); len(got) != 3 {
		t.Fatalf("the pinned closure substituted as %v", got)
	}
	get(t, narinfoURL(caddy.URL(), tops[1]), nil, 404)
}
