package index

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Records keyed by hash arrive in random key order, and bbolt splits every
// leaf page it writes into halves: an index that was filled or rewritten
// at random is about half empty pages. Open then compacts it, writing the
// records in key order into full pages in a new file that replaces the old
// one; a million paths take about half the disk and half the page cache.
const (
	// compactWaste is how many times larger than its data a file has to be
	// to be compacted.
	compactWaste = 1.5
	// compactTxSize bounds the records of one transaction of a compaction,
	// which holds them, copied, and its pages in memory until it commits.
	compactTxSize = 8 << 20
	// leafElementSize is what bbolt's leaf pages hold for a record beside
	// its key and value.
	leafElementSize = 16
)

// compactMinSize is the smallest file worth compacting.
var compactMinSize int64 = 16 << 20

// ErrNotCompacted is wrapped by the error of Open when the index is open
// and usable, but compacting its wasteful file failed; it stays as large
// as it was.
var ErrNotCompacted = errors.New("the index file could not be compacted")

// openLocked opens the bbolt file at path and holds its lock. A process
// that compacts the index replaces the file while others may wait for the
// old file's lock, so once locked, the file must still be the one at path;
// if it is not, it is opened again.
func openLocked(path string, timeout time.Duration) (*bolt.DB, error) {
	deadline := time.Now().Add(timeout)
	for {
		var file *os.File
		db, err := bolt.Open(path, 0o600, &bolt.Options{
			Timeout:      timeout,
			FreelistType: bolt.FreelistMapType,
			OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
				f, err := os.OpenFile(name, flag, perm)
				file = f
				return f, err
			},
		})
		if err != nil {
			return nil, err
		}
		locked, lerr := file.Stat()
		current, cerr := os.Stat(path)
		if lerr == nil && cerr == nil && os.SameFile(locked, current) {
			return db, nil
		}
		_ = db.Close()
		if timeout > 0 {
			if timeout = time.Until(deadline); timeout <= 0 {
				return nil, berrors.ErrTimeout
			}
		}
	}
}

// compactIfWasteful compacts the index when its file is much larger than
// its data. It needs free space for the compacted copy beside the file;
// without it, the index stays as it is.
func (x *Index) compactIfWasteful() error {
	var size, inuse int64
	err := x.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		if size < compactMinSize {
			return nil
		}
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			return scan(tx, name, func(k, v []byte) error {
				inuse += int64(leafElementSize + len(k) + len(v))
				return nil
			})
		})
	})
	if err != nil {
		return fmt.Errorf("%w: measuring %s: %w", ErrNotCompacted, x.path, err)
	}
	if size < compactMinSize || float64(size) < compactWaste*float64(inuse) {
		return nil
	}
	compacted := x.path + ".compacting"
	// Left by a compaction cut short; this process holds the index.
	if err := os.Remove(compacted); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("%w: removing %s: %w", ErrNotCompacted, compacted, err)
	}
	dst, err := bolt.Open(compacted, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType, NoSync: true})
	if err != nil {
		return fmt.Errorf("%w: creating %s: %w", ErrNotCompacted, compacted, err)
	}
	fail := func(what string, err error) error {
		_ = dst.Close()
		_ = os.Remove(compacted)
		return fmt.Errorf("%w: %s %s (%d bytes, about %d of them data; it needs as much free space beside it): %w",
			ErrNotCompacted, what, x.path, size, inuse, err)
	}
	if err := copyCompacted(dst, x.db); err != nil {
		return fail("copying", err)
	}
	if err := dst.Sync(); err != nil {
		return fail("syncing the copy of", err)
	}
	if err := os.Rename(compacted, x.path); err != nil {
		return fail("replacing", err)
	}
	dst.NoSync = false
	if dir, err := os.Open(filepath.Dir(x.path)); err == nil {
		_ = dir.Sync()
		_ = dir.Close()
	}
	// The old file's lock goes with it; a process waiting for it finds
	// another file at the path and opens that.
	_ = x.db.Close()
	x.db = dst
	return nil
}

// copyCompacted copies every bucket of src into dst in key order, into full
// pages, in transactions of at most compactTxSize bytes of records. That
// is what bbolt.Compact does for buckets that, as the index's, hold no
// buckets of their own; this copy also releases the pages of src it has
// read as it goes (scan), so that a compaction does not leave the whole
// file resident.
func copyCompacted(dst, src *bolt.DB) error {
	return src.View(func(from *bolt.Tx) error {
		var names [][]byte
		err := from.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, bytes.Clone(name))
			return nil
		})
		if err != nil {
			return err
		}
		to, err := dst.Begin(true)
		if err != nil {
			return err
		}
		defer func() { _ = to.Rollback() }()
		// The records of a transaction are copied out of src's map: the
		// commit reads them again, and in key order they come from pages
		// all over a file written at random, which scan has released by
		// then; reading them there would map the whole file back in.
		records := make([]byte, 0, compactTxSize)
		for _, name := range names {
			bucket, err := to.CreateBucket(name)
			if err != nil {
				return err
			}
			bucket.FillPercent = 1
			err = scan(from, name, func(k, v []byte) error {
				if v == nil {
					return fmt.Errorf("bucket %s holds a bucket, which no index makes", name)
				}
				if len(records) > 0 && len(records)+len(k)+len(v) > cap(records) {
					if err := to.Commit(); err != nil {
						return err
					}
					next, err := dst.Begin(true)
					if err != nil {
						return err
					}
					to, bucket, records = next, next.Bucket(name), records[:0]
					bucket.FillPercent = 1
				}
				records = append(records, k...)
				records = append(records, v...)
				end := len(records)
				key := records[end-len(v)-len(k) : end-len(v) : end-len(v)]
				return bucket.Put(key, records[end-len(v):end:end])
			})
			if err != nil {
				return err
			}
		}
		return to.Commit()
	})
}
