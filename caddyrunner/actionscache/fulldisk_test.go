package actionscache

import (
	"bytes"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestFullDiskRefusesSaves keeps the cache on a 1 MiB tmpfs: a chunk that
// does not fit is refused with 507, what the job saved before is still
// restored, nothing of the refused entry stays once the job ends, and then
// an entry that fits is saved.
func TestFullDiskRefusesSaves(t *testing.T) {
	root := harness.Tmpfs(t, "1m")
	c := openTestCache(t, root, nil)
	t.Cleanup(c.close) // before the unmount
	j, release := c.job("full-disk-token", mainScope("pkgs/main"))
	small := bytes.Repeat([]byte("s"), 200<<10)
	j.save("small", "1", small, 64<<10)

	status, id := j.reserve("big", "1", 2<<20)
	if status != http.StatusOK {
		t.Fatalf("reserving the big entry: %d", status)
	}
	if status := j.chunk(id, 0, bytes.Repeat([]byte("b"), 2<<20)); status != http.StatusInsufficientStorage {
		t.Fatalf("a chunk the disk cannot take: %d, want 507", status)
	}
	if key, data := j.restore("1", "small"); key != "small" || !bytes.Equal(data, small) {
		t.Fatalf("with the disk full, restoring what was saved got %q, %d bytes", key, len(data))
	}
	release()

	var left []string
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), dir.TempPrefix) {
			left = append(left, path)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("the refused entry left temporary files once its job ended: %v", left)
	}
	next, releaseNext := c.job("full-disk-token-2", mainScope("pkgs/main"))
	defer releaseNext()
	fits := bytes.Repeat([]byte("f"), 300<<10)
	next.save("fits", "1", fits, 100<<10)
	if key, data := next.restore("1", "fits"); key != "fits" || !bytes.Equal(data, fits) {
		t.Fatalf("after the refused entry was dropped, restoring a new one got %q, %d bytes", key, len(data))
	}
}
