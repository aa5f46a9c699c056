package index

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestScanLeavesLittleResident reads a 24 MiB bucket whole: a plain
// ForEach leaves the file's pages in the process's resident memory, and
// scan, releasing them every 4 MiB, keeps no more than twice that
// resident while it reads the same bytes, and next to none after.
func TestScanLeavesLittleResident(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scan.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	name := []byte("big")
	value := bytes.Repeat([]byte("v"), 8<<10)
	const records = 3072
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		for i := range records {
			if err := b.Put(fmt.Appendf(nil, "%08d", i), value); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// read reads the bucket with each, and returns how many records it
	// read, the most of the file resident at any of every 256th record,
	// and what is resident at the end.
	read := func(each func(tx *bolt.Tx, fn func(k, v []byte) error) error) (n int, peak, resident int64) {
		err := db.View(func(tx *bolt.Tx) error {
			releaseMapped(tx)
			return each(tx, func(_, v []byte) error {
				if bytes.Equal(v, value) {
					n++
				}
				if n%256 == 0 {
					peak = max(peak, residentOf(t, path))
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return n, peak, residentOf(t, path)
	}
	n, _, plain := read(func(tx *bolt.Tx, fn func(k, v []byte) error) error { return tx.Bucket(name).ForEach(fn) })
	if n != records || plain < 20<<20 {
		t.Fatalf("a plain ForEach read %d of %d records and left %d bytes of the file resident: the test cannot tell", n, records, plain)
	}
	old := releaseEvery
	releaseEvery = 4 << 20
	t.Cleanup(func() { releaseEvery = old })
	n, peak, scanned := read(func(tx *bolt.Tx, fn func(k, v []byte) error) error { return scan(tx, name, fn) })
	if n != records || scanned > 1<<20 || peak > 2*int64(releaseEvery) {
		t.Fatalf("scan read %d of %d records, with up to %d bytes of the file resident, and left %d; want at most %d, and under 1 MiB at the end",
			n, records, peak, scanned, 2*releaseEvery)
	}
}

// residentOf is how much of the file at path is resident in this
// process's memory maps, from /proc/self/smaps.
func residentOf(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total int64
	inFile := false
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		fields := strings.Fields(lines.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-"):
			inFile = len(fields) >= 6 && fields[5] == path
		case inFile && len(fields) == 3 && fields[0] == "Rss:":
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			total += kb << 10
		}
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// TestIndexReadsAndWritesLeaveLittleResident fills an index of 60,000
// records in random order, compacts it at Open, reads all of it, looks up
// every record on its own, as a reindex does, and deletes half of it in
// batches, as a collection does, with pages
// released every 256 KiB: after each, little of the file stays resident
// in this process, as it must for a collection of a million paths to
// stay small.
func TestIndexReadsAndWritesLeaveLittleResident(t *testing.T) {
	old, oldMin := releaseEvery, compactMinSize
	releaseEvery, compactMinSize = 256<<10, 1<<20
	t.Cleanup(func() { releaseEvery, compactMinSize = old, oldMin })
	x, path := openTest(t)
	var hashes []string
	for start := 0; start < 60000; start += 1000 {
		var batch []Path
		for range 1000 {
			p := usualPath
			p.Hash = randomHash(t)
			p.StorePath = "/nix/store/" + p.Hash + "-package-1.0"
			hashes = append(hashes, p.Hash)
			batch = append(batch, p)
		}
		if err := x.putPaths(batch, nil); err != nil {
			t.Fatal(err)
		}
	}
	if resident := residentOf(t, path); resident > 1<<20 {
		t.Fatalf("after filling the index, %d bytes of it are resident, want at most 1 MiB", resident)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	x, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	const most = 1 << 20
	check := func(what string) {
		t.Helper()
		resident := residentOf(t, path)
		t.Logf("after %s: %d of %d bytes resident", what, resident, info.Size())
		if resident > most {
			t.Fatalf("after %s, %d bytes of the %d-byte index are resident, want at most %d", what, resident, info.Size(), most)
		}
	}
	check("opening and compacting")
	read, err := x.Paths()
	if err != nil || len(read) != len(hashes) {
		t.Fatalf("read %d of %d records: %v", len(read), len(hashes), err)
	}
	check("reading every record")
	for _, hash := range hashes {
		if _, ok, err := x.Get(hash); err != nil || !ok {
			t.Fatalf("looking up %s: %v, %v", hash, ok, err)
		}
	}
	check("looking up every record")
	for start := 0; start < len(hashes); start += 2000 {
		if err := x.Delete(hashes[start : start+1000]...); err != nil {
			t.Fatal(err)
		}
	}
	check("deleting half the records")
}

// TestCompactionLeavesLittleOfTheSourceResident copies an index written
// at random into a compacted file: the records of a copy's transaction
// come, in key order, from pages all over the source, and its commit must
// not read them there again once scan has released them, or the whole
// source is mapped back in at every commit.
func TestCompactionLeavesLittleOfTheSourceResident(t *testing.T) {
	old := releaseEvery
	releaseEvery = 256 << 10
	t.Cleanup(func() { releaseEvery = old })
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "random.db")
	src, err := bolt.Open(srcPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	name := []byte("paths")
	value := bytes.Repeat([]byte("v"), 300)
	const records = 60000
	for start := 0; start < records; start += 1000 {
		err := src.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			for range 1000 {
				if err := b.Put([]byte(randomHash(t)), value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	dst, err := bolt.Open(filepath.Join(dir, "compacted.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := copyCompacted(dst, src); err != nil {
		t.Fatal(err)
	}
	var copied int
	err = dst.View(func(tx *bolt.Tx) error {
		return tx.Bucket(name).ForEach(func(_, v []byte) error {
			if bytes.Equal(v, value) {
				copied++
			}
			return nil
		})
	})
	if err != nil || copied != records {
		t.Fatalf("the copy holds %d of %d records: %v", copied, records, err)
	}
	info, err := os.Stat(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	if resident := residentOf(t, srcPath); resident > 1<<20 {
		t.Fatalf("after the copy, %d bytes of the %d-byte source are resident, want at most 1 MiB", resident, info.Size())
	}
}
