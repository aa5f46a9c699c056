package index

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestScanLeavesLittleResident reads a 24 MiB bucket whole: a plain
// ForEach leaves the file's pages in the process's resident memory, and
// scan leaves next to none, while reading the same bytes.
func TestScanLeavesLittleResident(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("releasing mapped pages is Linux's madvise(2), and resident memory is read from Linux's /proc")
	}
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

	read := func(each func(tx *bolt.Tx, fn func(k, v []byte) error) error) (n int, resident int64) {
		err := db.View(func(tx *bolt.Tx) error {
			releaseMapped(tx)
			return each(tx, func(_, v []byte) error {
				if bytes.Equal(v, value) {
					n++
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return n, residentOf(t, path)
	}
	n, plain := read(func(tx *bolt.Tx, fn func(k, v []byte) error) error { return tx.Bucket(name).ForEach(fn) })
	if n != records || plain < 20<<20 {
		t.Fatalf("a plain ForEach read %d of %d records and left %d bytes of the file resident: the test cannot tell", n, records, plain)
	}
	n, scanned := read(func(tx *bolt.Tx, fn func(k, v []byte) error) error { return scan(tx, name, fn) })
	if n != records || scanned > 1<<20 {
		t.Fatalf("scan read %d of %d records and left %d bytes of the file resident, want under 1 MiB", n, records, scanned)
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
