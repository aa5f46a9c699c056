// Package index is what a nix_cache knows about its store paths beyond the
// files themselves: for every path its references and sizes, who pushed it
// and when, and when it was last served; and the CI runs that pushed
// paths. Retention decides from it without reading every
// narinfo.
//
// The files stay the truth. Serving never consults the index, and
// Reconcile brings it back in line with the files (after a crash, a lost
// index, or a directory written by `nix copy --to file://`).
//
// The index is a bbolt file: embedded, pure Go, one writer at a time. A
// second process that opens it waits up to the given timeout and then gets
// ErrInUse.
//
// It knows the narinfo format and nothing of storage backends, HTTP or
// Caddy.
package index

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Buckets of the index file.
var (
	pathsBucket   = []byte("path records") // narinfo hash → Path (record.go)
	pushersBucket = []byte("pushers")      // pusher key → Pusher (JSON)
	servedBucket  = []byte("served")       // narinfo hash → last served, Unix seconds
	runsBucket    = []byte("runs")         // repository \x00 run id → Run (JSON)
	metaBucket    = []byte("meta")
	// jsonPathsBucket holds the paths of a schema 1 index, as JSON.
	jsonPathsBucket = []byte("paths")
)

// schemaVersion is stored in the meta bucket. An index of schema 1 is
// converted when it is opened; one of another schema is rebuilt from the
// files.
const schemaVersion = "2"

// ErrInUse is returned by Open when another process holds the index.
var ErrInUse = errors.New("the index is in use by another process")

// ErrCorrupt is wrapped by the error of Open when the file is not a
// readable index; it has been moved aside and a new, empty one created.
var ErrCorrupt = errors.New("the index file was unreadable")

// Index is a cache's index file.
type Index struct {
	db      *bolt.DB
	path    string
	commits committer
	// touches counts the records looked up or written one at a time
	// (touched).
	touches atomic.Int64
}

// Open opens or creates the index file at path (mode 0600, its directory
// 0700). An unreadable or foreign-schema file is moved aside to
// path.corrupt-<time> and replaced by an empty index; Open then returns
// the new index together with an error wrapping ErrCorrupt, so the caller
// can warn and rebuild. A file much larger than its records is compacted;
// when that fails, Open returns the index as it was together with an
// error wrapping ErrNotCompacted.
func Open(path string, timeout time.Duration) (*Index, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the index directory: %w", err)
	}
	x, err := open(path, timeout)
	if err == nil {
		return x, x.compactIfWasteful()
	}
	if errors.Is(err, ErrInUse) {
		return nil, err
	}
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	if rerr := os.Rename(path, aside); rerr != nil {
		return nil, fmt.Errorf("opening the index %s: %w (and moving it aside failed: %v)", path, err, rerr)
	}
	x, nerr := open(path, timeout)
	if nerr != nil {
		return nil, fmt.Errorf("creating a new index %s: %w", path, nerr)
	}
	return x, fmt.Errorf("%w (%v); it was moved to %s and a new one is built from the files", ErrCorrupt, err, aside)
}

func open(path string, timeout time.Duration) (*Index, error) {
	db, err := openLocked(path, timeout)
	if errors.Is(err, berrors.ErrTimeout) {
		if who := holder(path); who != "" {
			return nil, fmt.Errorf("%s: %w (%s)", path, ErrInUse, who)
		}
		return nil, fmt.Errorf("%s: %w", path, ErrInUse)
	}
	if err != nil {
		return nil, err
	}
	x := &Index{db: db, path: path}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		switch v := meta.Get([]byte("schema")); {
		case v == nil:
			if err := meta.Put([]byte("schema"), []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion && string(v) != "1":
			return fmt.Errorf("index schema %q, this caddy writes %q", v, schemaVersion)
		}
		for _, name := range [][]byte{pathsBucket, pushersBucket, servedBucket, runsBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = convertJSONPaths(db)
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return x, nil
}

// convertServedKeys keys the served times of a schema 1 index, keyed by
// hash part, by KeyOf their hash part.
func convertServedKeys(tx *bolt.Tx) error {
	b := tx.Bucket(servedBucket)
	converted := map[string][]byte{}
	if err := b.ForEach(func(k, v []byte) error {
		converted[string(k)] = bytes.Clone(v)
		return nil
	}); err != nil {
		return err
	}
	for hash, v := range converted {
		if err := b.Delete([]byte(hash)); err != nil {
			return err
		}
		if err := b.Put(KeyOf(hash), v); err != nil {
			return err
		}
	}
	return nil
}

// convertBatch is how many records one transaction of convertJSONPaths
// converts.
const convertBatch = 10000

// convertJSONPaths converts the JSON records of a schema 1 index into
// binary ones, a batch at a time, and then marks the index schema 2. A
// conversion cut short goes on where it stopped the next time the index
// is opened.
func convertJSONPaths(db *bolt.DB) error {
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			legacy := tx.Bucket(jsonPathsBucket)
			if legacy == nil {
				done = true
				return nil
			}
			var converted [][]byte
			c := legacy.Cursor()
			for k, v := c.First(); k != nil && len(converted) < convertBatch; k, v = c.Next() {
				var p Path
				if err := json.Unmarshal(v, &p); err != nil {
					return fmt.Errorf("index record of %s: %w", k, err)
				}
				p.Hash = string(k)
				if err := putPath(tx, &p); err != nil {
					return err
				}
				converted = append(converted, bytes.Clone(k))
			}
			for _, k := range converted {
				if err := legacy.Delete(k); err != nil {
					return err
				}
			}
			if len(converted) < convertBatch {
				done = true
				if err := tx.DeleteBucket(jsonPathsBucket); err != nil {
					return err
				}
				if err := convertServedKeys(tx); err != nil {
					return err
				}
				return tx.Bucket(metaBucket).Put([]byte("schema"), []byte(schemaVersion))
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("converting the index to schema %s: %w", schemaVersion, err)
		}
	}
	return nil
}

// Path is the index file's path.
func (x *Index) Path() string { return x.path }

// Close closes the index file.
func (x *Index) Close() error { return x.db.Close() }

// Size is the index file's size in bytes.
func (x *Index) Size() int64 {
	var size int64
	_ = x.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		return nil
	})
	return size
}

// Complete reports whether the index has been reconciled with the files
// at least once since it was created.
func (x *Index) Complete() bool {
	var done bool
	_ = x.db.View(func(tx *bolt.Tx) error {
		done = tx.Bucket(metaBucket).Get([]byte("complete")) != nil
		return nil
	})
	return done
}

func (x *Index) setComplete(tx *bolt.Tx) error {
	return tx.Bucket(metaBucket).Put([]byte("complete"), []byte(time.Now().UTC().Format(time.RFC3339)))
}
