package index

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"iter"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	bolt "go.etcd.io/bbolt"
)

// hashLen is the length of a store path's hash part.
const hashLen = 32

// FromNarInfo is the record of an admitted narinfo stored as file.
func FromNarInfo(info *narinfo.NarInfo, file storage.Info) Path {
	self := path.Base(info.StorePath)
	p := Path{
		Hash:        self[:hashLen],
		StorePath:   info.StorePath,
		NarURL:      info.URL,
		FileSize:    int64(info.FileSize),
		NarSize:     int64(info.NarSize),
		NarinfoSize: file.Size,
		Version:     file.Version,
		PushedAt:    file.ModTime,
	}
	for _, ref := range info.References {
		if ref != self && len(ref) >= hashLen {
			p.References = append(p.References, ref[:hashLen])
		}
	}
	p.LastPushedAt = p.PushedAt
	return p
}

// ReconcileStats says what a reconciliation changed.
type ReconcileStats struct {
	// Narinfos is how many narinfo files there are.
	Narinfos int `json:"narinfos"`
	// Added is how many were indexed anew or again (the file changed).
	Added int `json:"indexed"`
	// Removed is how many records had no file any more.
	Removed int `json:"forgotten"`
	// Invalid lists the narinfos that the cache's rule refuses, which are
	// never served and not indexed.
	Invalid []string `json:"invalid,omitempty"`
}

// reconcileBatch is how many records one write transaction takes: few,
// since a commit faults in the old page of every leaf it changes, and
// Linux maps 64 KiB of the file around each fault, which no release can
// undo before the commit ends. 256 leaves map 16 MiB at most.
const reconcileBatch = 256

// Reconcile brings the index in line with the files: every narinfo the
// cache would serve is indexed (again, when its file changed, or always
// with full), and records whose file is gone are dropped. Provenance and
// served times of unchanged paths are kept.
//
// It holds a few dozen bytes per record and reads the listing as it
// comes, so that a million paths take tens of megabytes.
func (x *Index) Reconcile(ctx context.Context, store storage.Store, storeDir string, full bool) (ReconcileStats, error) {
	var stats ReconcileStats
	indexed, err := x.indexedVersions()
	if err != nil {
		return stats, err
	}
	var changed []Path
	used := map[string]time.Time{}
	invalid := map[string]bool{}
	flush := func() error {
		if err := x.putPaths(changed, used); err != nil {
			return err
		}
		stats.Added += len(changed)
		changed = changed[:0]
		clear(used)
		return nil
	}
	// indexFile is Reconcile's work on one listed file.
	indexFile := func(file storage.Info) error {
		hash, ok := strings.CutSuffix(file.Name, ".narinfo")
		if !ok || len(hash) != hashLen {
			return nil
		}
		stats.Narinfos++
		i, known := indexed.find(hash)
		if known {
			indexed.present[i] = true
			if !full && indexed.entries[i].version == versionDigest(file.Version) {
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := storage.ReadAll(ctx, store, file.Name, nixfmt.MaxNarInfoSize)
		if errors.Is(err, fs.ErrNotExist) {
			if known {
				indexed.present[i] = false
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", file.Name, err)
		}
		info, err := nixfmt.Admit(data, storeDir, hash)
		if err != nil {
			stats.Invalid = append(stats.Invalid, fmt.Sprintf("%s: %v", file.Name, err))
			if known {
				indexed.present[i] = false
			}
			invalid[hash] = true
			return nil
		}
		changed = append(changed, FromNarInfo(info, file))
		// A narinfo read since it was written was served: its access
		// time says when, should the index have lost it.
		if file.UsedAt.After(file.ModTime) {
			used[hash] = file.UsedAt
		}
		if len(changed) == reconcileBatch {
			return flush()
		}
		return nil
	}
	var failed error
	err = storage.Walk(ctx, store, "", func(file storage.Info) error {
		failed = indexFile(file)
		return failed
	})
	switch {
	case failed != nil:
		return stats, failed
	case err != nil:
		return stats, fmt.Errorf("listing the cache: %w", err)
	}
	if err := flush(); err != nil {
		return stats, err
	}
	var gone []string
	for hash := range indexed.missing() {
		// An upload may have stored it since the listing.
		if _, err := store.Stat(ctx, hash+".narinfo"); invalid[hash] || errors.Is(err, fs.ErrNotExist) {
			gone = append(gone, hash)
		}
	}
	if err := x.Delete(gone...); err != nil {
		return stats, err
	}
	stats.Removed = len(gone)
	return stats, x.write(x.setComplete)
}

// versionsSeed keys versionDigest for the life of the process.
var versionsSeed = maphash.MakeSeed()

// versionDigest stands for a storage version in indexedVersions: two
// versions alike in all 64 bits are taken for the same.
func versionDigest(version string) uint64 { return maphash.String(versionsSeed, version) }

// indexedVersions is what Reconcile knows of the index: the key and
// version of every record, sorted by key, and which of them the listing
// found.
type indexedVersions struct {
	entries []indexedVersion
	present []bool
	// others are the hash parts that are no nixbase32, which no narinfo
	// file a cache serves has.
	others []string
}

type indexedVersion struct {
	key     [keyLen]byte
	version uint64
}

// find returns the entry of hash.
func (v *indexedVersions) find(hash string) (int, bool) {
	key := KeyOf(hash)
	if len(key) != keyLen {
		return 0, false
	}
	return slices.BinarySearchFunc(v.entries, key, func(e indexedVersion, key []byte) int {
		return bytes.Compare(e.key[:], key)
	})
}

// missing yields the hash parts of the records the listing did not find.
func (v *indexedVersions) missing() iter.Seq[string] {
	return func(yield func(string) bool) {
		for i, e := range v.entries {
			if !v.present[i] && !yield(HashOf(e.key[:])) {
				return
			}
		}
		for _, hash := range v.others {
			if !yield(hash) {
				return
			}
		}
	}
}

// indexedVersions reads the key and version of every record, without
// decoding the rest of them.
func (x *Index) indexedVersions() (*indexedVersions, error) {
	v := new(indexedVersions)
	err := x.db.View(func(tx *bolt.Tx) error {
		v.entries = make([]indexedVersion, 0, Snapshot{tx, x}.Len())
		// The bucket's order is the keys' order.
		return scan(tx, pathsBucket, func(k, data []byte) error {
			version, err := recordVersion(data)
			if err != nil {
				return fmt.Errorf("index record of %s: %w", HashOf(k), err)
			}
			if len(k) != keyLen {
				v.others = append(v.others, HashOf(k))
				return nil
			}
			e := indexedVersion{version: versionDigest(version)}
			copy(e.key[:], k)
			v.entries = append(v.entries, e)
			return nil
		})
	})
	v.present = make([]bool, len(v.entries))
	return v, err
}

// putPaths stores the records of paths read from their narinfos, with the
// provenance of the records they replace for the same store path, which
// no narinfo holds, and the use times the index does not have yet. The
// old record is read in the transaction that replaces it, so that a push
// recorded meanwhile is kept, and from the page the write reads anyway.
func (x *Index) putPaths(paths []Path, used map[string]time.Time) error {
	if len(paths) == 0 {
		return nil
	}
	return x.write(func(tx *bolt.Tx) error {
		served := tx.Bucket(servedBucket)
		for _, p := range paths {
			x.touched(tx, 2)
			old, ok, err := getPath(tx, p.Hash)
			if err != nil {
				return err
			}
			if ok && old.StorePath == p.StorePath {
				p.PushedAt, p.LastPushedAt, p.Pusher, p.PullRequestOnly = old.PushedAt, old.LastPushedAt, old.Pusher, old.PullRequestOnly
			}
			if err := putPath(tx, &p); err != nil {
				return err
			}
			if at, ok := used[p.Hash]; ok && served.Get(KeyOf(p.Hash)) == nil {
				if err := served.Put(KeyOf(p.Hash), servedValue(at)); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// AdoptRuns takes run records kept outside the index into it, for an index
// built anew: runs it does not know are stored, and paths they pushed that
// the index knows no pusher of get the run's job as pusher, pull-request
// only when every run that pushed them was for a pull request.
func (x *Index) AdoptRuns(runs []*Run) error {
	return x.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(runsBucket)
		adopted := map[string]*Path{}
		for _, run := range runs {
			key := runKey(&run.Job)
			if b.Get(key) != nil {
				continue
			}
			data, err := json.Marshal(run)
			if err != nil {
				return err
			}
			if err := b.Put(key, data); err != nil {
				return err
			}
			for _, hash := range run.Paths {
				p, ok := adopted[hash]
				if !ok {
					record, found, err := getPath(tx, hash)
					if err != nil || !found || record.Pusher != nil {
						continue
					}
					p = &record
					p.PullRequestOnly = true
					adopted[hash] = p
				}
				if p.Pusher == nil {
					job := run.Job
					p.Pusher = &Pusher{Job: &job}
				}
				p.PullRequestOnly = p.PullRequestOnly && run.PullRequest
			}
		}
		for _, p := range adopted {
			if err := putPath(tx, p); err != nil {
				return err
			}
		}
		return nil
	})
}
