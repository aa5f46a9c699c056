package dir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	root := t.TempDir()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, root
}

func write(t *testing.T, s *Store, name, content string) storage.Upload {
	t.Helper()
	up, err := s.Create(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(up, content); err != nil {
		t.Fatal(err)
	}
	return up
}

func read(t *testing.T, s *Store, name string) string {
	t.Helper()
	obj, _, err := s.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	data, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestUploadIsInvisibleUntilCommitted(t *testing.T) {
	ctx := context.Background()
	s, root := openTemp(t)
	up := write(t, s, "nar/x.nar", "nar content")
	if _, err := s.Stat(ctx, "nar/x.nar"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat before the commit: %v, want not found", err)
	}
	if list, _ := s.List(ctx, "nar"); len(list) != 0 {
		t.Fatalf("List shows an upload in progress: %v", list)
	}
	buf := make([]byte, 3)
	if _, err := up.ReadAt(buf, 4); err != nil || string(buf) != "con" {
		t.Fatalf("ReadAt before the commit: %q, %v", buf, err)
	}
	if err := up.Commit(); err != nil {
		t.Fatal(err)
	}
	up.Abort() // after a commit: nothing
	if got := read(t, s, "nar/x.nar"); got != "nar content" {
		t.Fatalf("committed content %q", got)
	}
	list, err := s.List(ctx, "nar")
	if err != nil || len(list) != 1 || list[0].Name != "nar/x.nar" || list[0].Size != 11 {
		t.Fatalf("List after the commit: %v, %v", list, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "nar")); len(entries) != 1 {
		t.Fatalf("the directory holds %v, want the committed file alone", entries)
	}
}

func TestCommitReplacesAndCommitNewDoesNot(t *testing.T) {
	ctx := context.Background()
	s, root := openTemp(t)
	if err := write(t, s, "a.narinfo", "first").Commit(); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Stat(ctx, "a.narinfo")
	created, err := write(t, s, "a.narinfo", "second").CommitNew()
	if err != nil || created {
		t.Fatalf("CommitNew over an existing object: %v, %v; want not created", created, err)
	}
	if got := read(t, s, "a.narinfo"); got != "first" {
		t.Fatalf("CommitNew replaced the object: %q", got)
	}
	if err := write(t, s, "a.narinfo", "third!").Commit(); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Stat(ctx, "a.narinfo")
	if got := read(t, s, "a.narinfo"); got != "third!" || after.Version == before.Version {
		t.Fatalf("Commit: %q, version %q then %q; want the new content and a new version", got, before.Version, after.Version)
	}
	if created, err := write(t, s, "b.narinfo", "new").CommitNew(); err != nil || !created {
		t.Fatalf("CommitNew of a new object: %v, %v", created, err)
	}
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			t.Fatalf("a temporary file stayed behind: %s", e.Name())
		}
	}
}

func TestAbortLeavesNothing(t *testing.T) {
	s, root := openTemp(t)
	write(t, s, "log/x.drv", "half a log").Abort()
	if _, err := os.Stat(filepath.Join(root, "log")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an aborted upload left the directory it made: %v", err)
	}
	// A directory another object is in stays, and so does that object.
	if err := write(t, s, "log/kept.drv", "a log").Commit(); err != nil {
		t.Fatal(err)
	}
	write(t, s, "log/x.drv", "half a log").Abort()
	entries, _ := os.ReadDir(filepath.Join(root, "log"))
	if len(entries) != 1 || entries[0].Name() != "kept.drv" {
		t.Fatalf("after an aborted upload, log/ holds %v; want kept.drv alone", entries)
	}
	if err := s.Delete(context.Background(), "log/missing.drv"); err != nil {
		t.Fatalf("deleting a missing object: %v", err)
	}
}

func TestOpenRefusesWhatLeavesTheRoot(t *testing.T) {
	ctx := context.Background()
	s, root := openTemp(t)
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "out.narinfo")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Open(ctx, "out.narinfo"); !errors.Is(err, storage.ErrOutsideRoot) {
		t.Fatalf("Open through a symlink out of the root: %v, want ErrOutsideRoot", err)
	}
	if _, _, err := s.Open(ctx, "../etc/passwd"); err == nil {
		t.Fatal("Open of ../etc/passwd succeeded")
	}
	if err := os.Mkdir(filepath.Join(root, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "nar"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat of a directory: %v, want not found", err)
	}
}

func TestRemoveAbandonedKeepsLiveUploads(t *testing.T) {
	ctx := context.Background()
	s, root := openTemp(t)
	live := write(t, s, "nar/live.nar", "being written")
	defer live.Abort()
	dead := filepath.Join(root, "nar", TempPrefix+"1-0123456789abcdef")
	if err := os.WriteFile(dead, []byte("left by a crash"), 0o644); err != nil {
		t.Fatal(err)
	}
	liveNames, abandoned, err := s.Temporaries(t.Context())
	if err != nil || len(liveNames) != 1 || len(abandoned) != 1 || abandoned[0] != "nar/"+filepath.Base(dead) {
		t.Fatalf("Temporaries: live %v, abandoned %v, %v", liveNames, abandoned, err)
	}
	removed, err := s.RemoveAbandoned(ctx)
	if err != nil || len(removed) != 1 {
		t.Fatalf("RemoveAbandoned: %v, %v", removed, err)
	}
	if _, err := os.Stat(dead); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the dead writer's file is still there: %v", err)
	}
	if err := live.Commit(); err != nil {
		t.Fatalf("the live upload could not commit after the sweep: %v", err)
	}
	// A lock taken by another open file description is seen as live too.
	f, err := os.Create(filepath.Join(root, TempPrefix+"other"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if removed, _ := s.RemoveAbandoned(ctx); len(removed) != 0 {
		t.Fatalf("removed a held file: %v", removed)
	}
}

// TestOverlaysAreSweptAndLeaveNoDirectories: what a dead writer left in an
// overlay's directories is found and removed like any other, and deleting
// an overlay's last file removes the directories it leaves empty, but not
// the layout's own.
func TestOverlaysAreSweptAndLeaveNoDirectories(t *testing.T) {
	ctx := context.Background()
	s, root := openTemp(t)
	up := write(t, s, "overlays/0123456789abcdfghijklmnpqrsvwxyz/nar/a.nar", "an overlay's NAR")
	if err := up.Commit(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(root, "overlays", "0123456789abcdfghijklmnpqrsvwxyz", "nar", TempPrefix+"1-0123456789abcdef")
	if err := os.WriteFile(dead, []byte("left by a crash"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := s.RemoveAbandoned(ctx)
	if err != nil || len(removed) != 1 || !strings.HasPrefix(removed[0], "overlays/") {
		t.Fatalf("RemoveAbandoned: %v, %v", removed, err)
	}
	main := write(t, s, "nar/b.nar", "the cache's NAR")
	if err := main.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"overlays/0123456789abcdfghijklmnpqrsvwxyz/nar/a.nar", "nar/b.nar"} {
		if err := s.Delete(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "overlays")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the emptied overlay's directories stay: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "nar")); err != nil {
		t.Errorf("the layout's nar directory went when it was emptied: %v", err)
	}
}

func TestWalkSeesEveryFileAcrossBatchesAndStops(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	const n = walkBatch*2 + 7
	for i := range n {
		if err := write(t, s, fmt.Sprintf("nar/%05d.nar", i), "x").Commit(); err != nil {
			t.Fatal(err)
		}
	}
	inProgress := write(t, s, "nar/upload.nar", "y")
	defer inProgress.Abort()
	seen := map[string]bool{}
	if err := s.Walk(ctx, "nar", func(info storage.Info) error {
		if seen[info.Name] || info.Size != 1 {
			return fmt.Errorf("%s seen twice or of size %d", info.Name, info.Size)
		}
		seen[info.Name] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != n {
		t.Fatalf("Walk saw %d files, want %d", len(seen), n)
	}
	list, err := s.List(ctx, "nar")
	if err != nil || len(list) != n || list[0].Name != "nar/00000.nar" || list[n-1].Name != fmt.Sprintf("nar/%05d.nar", n-1) {
		t.Fatalf("List: %d files, %v; want all %d in name order", len(list), err, n)
	}
	stop := errors.New("enough")
	calls := 0
	err = s.Walk(ctx, "nar", func(storage.Info) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Walk after fn failed: %v, %d calls; want fn's error after one", err, calls)
	}
	if err := s.Walk(ctx, "missing", func(storage.Info) error { return stop }); err != nil {
		t.Fatalf("Walk of a missing directory: %v, want nothing", err)
	}
}
