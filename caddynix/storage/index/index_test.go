package index

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTest(t *testing.T) (*Index, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "idx", "index.db")
	x, err := Open(path, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = x.Close() })
	return x, path
}

func TestOpenIsPrivateAndExclusive(t *testing.T) {
	_, path := openTest(t)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("index file mode %o, want 600", info.Mode().Perm())
	}
	if dir, _ := os.Stat(filepath.Dir(path)); dir.Mode().Perm() != 0o700 {
		t.Errorf("index directory mode %o, want 700", dir.Mode().Perm())
	}
	if _, err := Open(path, 100*time.Millisecond); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
}

func TestOpenReplacesACorruptIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	if err := os.WriteFile(path, []byte("this is not a bbolt file, whatever it once was"), 0o600); err != nil {
		t.Fatal(err)
	}
	x, err := Open(path, time.Second)
	if !errors.Is(err, ErrCorrupt) || x == nil {
		t.Fatalf("Open of a corrupt file: %v, %v; want a new index and ErrCorrupt", x, err)
	}
	defer func() { _ = x.Close() }()
	if x.Complete() {
		t.Error("a replaced index claims to be complete")
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Errorf("the corrupt file was not kept aside: %v", aside)
	}
}

func TestRecordPushKeepsTheFirstPusher(t *testing.T) {
	x, _ := openTest(t)
	first := time.Unix(1000, 0)
	pr := &Pusher{Job: &Job{Repository: "o/r", RunID: "7", PullRequest: true}}
	if err := x.RecordPush(Path{Hash: "h", StorePath: "/nix/store/h-x"}, pr, first); err != nil {
		t.Fatal(err)
	}
	p, _, _ := x.Get("h")
	if !p.PullRequestOnly || p.Pusher.Job.RunID != "7" {
		t.Fatalf("after a pull-request push: %+v", p)
	}
	main := &Pusher{Job: &Job{Repository: "o/r", RunID: "8", DefaultBranch: true}}
	if err := x.RecordPush(Path{Hash: "h", StorePath: "/nix/store/h-x"}, main, first.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	p, _, _ = x.Get("h")
	if p.PullRequestOnly || p.Pusher.Job.RunID != "7" || !p.PushedAt.Equal(first) || !p.LastPushedAt.Equal(first.Add(time.Hour)) {
		t.Fatalf("after a default-branch push of the same path: %+v", p)
	}
}

func TestKeptRunsAreTheLastSuccessfulDefaultBranchRuns(t *testing.T) {
	x, _ := openTest(t)
	at := time.Unix(1000, 0)
	run := func(id string, defaultBranch, ok bool, paths ...string) {
		job := &Job{Repository: "o/r", RunID: id, DefaultBranch: defaultBranch}
		if err := x.StartJob(job, 2, at); err != nil {
			t.Fatal(err)
		}
		for _, hash := range paths {
			if err := x.RecordPush(Path{Hash: hash, StorePath: "/nix/store/" + hash + "-x"}, &Pusher{Job: job}, at); err != nil {
				t.Fatal(err)
			}
		}
		if err := x.FinishJob(job, ok, at); err != nil {
			t.Fatal(err)
		}
	}
	run("1", true, true, "a")
	run("2", true, true, "b")
	run("9", true, false, "c")  // failed
	run("10", false, true, "d") // a pull request
	run("11", true, true, "e")
	// Numeric order: run 11 is newer than run 9 and 2.
	kept, forgotten, err := x.KeptRuns()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range kept {
		ids = append(ids, r.RunID)
	}
	if !slices.Equal(ids, []string{"11", "2"}) {
		t.Fatalf("kept runs %v, want [11 2]", ids)
	}
	if len(forgotten) != 1 || forgotten[0].RunID != "1" {
		t.Fatalf("forgotten runs %v, want run 1", forgotten)
	}
	kept, _, _ = x.KeptRuns()
	if len(kept) != 2 {
		t.Fatalf("kept runs changed on a second look: %d", len(kept))
	}
	// Run 1 is older than both kept runs: forgotten.
	if err := x.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(runsBucket).Get(runKey(&Job{Repository: "o/r", RunID: "1"})) != nil {
			t.Error("run 1 is still recorded")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
