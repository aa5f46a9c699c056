package index

import (
	"crypto/rand"
	"errors"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	bolt "go.etcd.io/bbolt"
)

func randomHash(t *testing.T) string {
	t.Helper()
	b := make([]byte, keyLen)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return nixbase32.EncodeToString(b)
}

// wastefulIndex fills an index as uploads and reconciliations do, in
// random key order a few hundred records at a time, and then forgets
// half of them.
func wastefulIndex(t *testing.T) (string, map[string]*Path, map[string]time.Time) {
	t.Helper()
	old := compactMinSize
	compactMinSize = 1 << 20
	t.Cleanup(func() { compactMinSize = old })
	x, path := openTest(t)
	var hashes []string
	for range 12000 {
		hashes = append(hashes, randomHash(t))
	}
	served := map[string]time.Time{}
	for start := 0; start < len(hashes); start += 300 {
		var batch []Path
		for i, hash := range hashes[start : start+300] {
			p := usualPath
			p.Hash = hash
			p.StorePath = "/nix/store/" + hash + "-package-1.0"
			p.References = []string{hashes[(start+i)/2], hashes[(start+i)/3], hashes[(start+i)/5]}
			batch = append(batch, p)
			if i%2 == 0 {
				served[hash] = time.Unix(1700000000+int64(i), 0)
			}
		}
		if err := x.putPaths(batch, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.MarkServed(served); err != nil {
		t.Fatal(err)
	}
	var forgotten []string
	for i, hash := range hashes {
		if i%2 == 1 {
			forgotten = append(forgotten, hash)
			delete(served, hash)
		}
	}
	if err := x.Delete(forgotten...); err != nil {
		t.Fatal(err)
	}
	paths, err := x.Paths()
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	return path, paths, served
}

func TestOpenCompactsAWastefulIndex(t *testing.T) {
	path, paths, served := wastefulIndex(t)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	x, err := Open(path, time.Second)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer func() { _ = x.Close() }()
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("index of %d paths: %d bytes, compacted to %d", len(paths), before.Size(), after.Size())
	if float64(after.Size()) > float64(before.Size())/compactWaste {
		t.Errorf("the index file was %d bytes and is %d after Open; want it compacted", before.Size(), after.Size())
	}
	if _, err := os.Stat(path + ".compacting"); !os.IsNotExist(err) {
		t.Errorf("the compaction's copy is left beside the index: %v", err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Errorf("compacted index mode %o, want 600", info.Mode().Perm())
	}
	got, err := x.Paths()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, paths) {
		t.Errorf("the compacted index has %d records, not the %d it had, or different ones", len(got), len(paths))
	}
	gotServed, err := x.Served()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotServed, served) {
		t.Errorf("the compacted index has %d served times, not the %d it had, or different ones", len(gotServed), len(served))
	}
	// The index goes on working on the new file, and keeps what it writes.
	p := usualPath
	if err := x.RecordPush(p, p.Pusher, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	x, err = Open(path, time.Second)
	if err != nil {
		t.Fatalf("Open of the compacted index: %v", err)
	}
	if again, _ := os.Stat(path); !os.SameFile(again, after) {
		t.Error("a compacted index was compacted again")
	}
	if _, ok, err := x.Get(p.Hash); !ok || err != nil {
		t.Errorf("a record written after compaction is gone: %v, %v", ok, err)
	}
}

func TestOpenWaitingThroughACompactionGetsTheNewFile(t *testing.T) {
	path, paths, _ := wastefulIndex(t)
	holder, err := open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type opened struct {
		x   *Index
		err error
	}
	waiter := make(chan opened)
	go func() {
		x, err := open(path, 20*time.Second)
		waiter <- opened{x, err}
	}()
	// The waiter has opened the old file and waits for its lock.
	time.Sleep(300 * time.Millisecond)
	if err := holder.compactIfWasteful(); err != nil {
		t.Fatal(err)
	}
	p := usualPath
	if err := holder.RecordPush(p, p.Pusher, time.Now()); err != nil {
		t.Fatal(err)
	}
	select {
	case w := <-waiter:
		t.Fatalf("Open returned while the index was held: %v", w.err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	w := <-waiter
	if w.err != nil {
		t.Fatalf("Open after the compaction: %v", w.err)
	}
	defer func() { _ = w.x.Close() }()
	if _, ok, _ := w.x.Get(p.Hash); !ok {
		t.Error("the process that waited opened the file the compaction replaced: it misses a record written after")
	}
	if got, _ := w.x.Paths(); len(got) != len(paths)+1 {
		t.Errorf("the process that waited sees %d records, want %d", len(got), len(paths)+1)
	}
}

func TestFailedCompactionKeepsTheIndex(t *testing.T) {
	path, paths, _ := wastefulIndex(t)
	// A directory where the copy would go: the compaction cannot write it.
	if err := os.Mkdir(path+".compacting", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".compacting/file", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	x, err := Open(path, time.Second)
	if !errors.Is(err, ErrNotCompacted) || x == nil {
		t.Fatalf("Open: %v, %v; want the index and ErrNotCompacted", x, err)
	}
	defer func() { _ = x.Close() }()
	t.Log(err)
	if got, _ := x.Paths(); !reflect.DeepEqual(got, paths) {
		t.Errorf("after a failed compaction the index has %d records, want %d", len(got), len(paths))
	}
	if err := x.update(func(tx *bolt.Tx) error { return putPath(tx, &usualPath) }); err != nil {
		t.Errorf("after a failed compaction the index takes no writes: %v", err)
	}
}
