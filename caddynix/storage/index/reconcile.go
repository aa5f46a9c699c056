package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
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

// reconcileBatch is how many records one write transaction takes.
const reconcileBatch = 2000

// Reconcile brings the index in line with the files: every narinfo the
// cache would serve is indexed (again, when its file changed, or always
// with full), and records whose file is gone are dropped. Provenance and
// served times of unchanged paths are kept.
func (x *Index) Reconcile(ctx context.Context, store storage.Store, storeDir string, full bool) (ReconcileStats, error) {
	var stats ReconcileStats
	files, err := store.List(ctx, "")
	if err != nil {
		return stats, fmt.Errorf("listing the cache: %w", err)
	}
	indexed, err := x.versions()
	if err != nil {
		return stats, err
	}
	var changed []Path
	used := map[string]time.Time{}
	present := make(map[string]bool, len(files))
	invalid := map[string]bool{}
	for _, file := range files {
		hash, ok := strings.CutSuffix(file.Name, ".narinfo")
		if !ok || len(hash) != hashLen {
			continue
		}
		stats.Narinfos++
		present[hash] = true
		if version, ok := indexed[hash]; ok && version == file.Version && !full {
			continue
		}
		if err := ctx.Err(); err != nil {
			return stats, err
		}
		data, err := storage.ReadAll(ctx, store, file.Name, nixfmt.MaxNarInfoSize)
		if errors.Is(err, fs.ErrNotExist) {
			delete(present, hash)
			continue
		}
		if err != nil {
			return stats, fmt.Errorf("reading %s: %w", file.Name, err)
		}
		info, err := nixfmt.Admit(data, storeDir, hash)
		if err != nil {
			stats.Invalid = append(stats.Invalid, fmt.Sprintf("%s: %v", file.Name, err))
			delete(present, hash)
			invalid[hash] = true
			continue
		}
		p := FromNarInfo(info, file)
		if old, ok, err := x.Get(hash); err != nil {
			return stats, err
		} else if ok && old.StorePath == p.StorePath {
			p.PushedAt, p.LastPushedAt, p.Pusher, p.PullRequestOnly = old.PushedAt, old.LastPushedAt, old.Pusher, old.PullRequestOnly
		}
		changed = append(changed, p)
		// A narinfo read since it was written was served: its access
		// time says when, should the index have lost it.
		if file.UsedAt.After(file.ModTime) {
			used[hash] = file.UsedAt
		}
		if len(changed) == reconcileBatch {
			if err := x.putPaths(changed, used); err != nil {
				return stats, err
			}
			stats.Added += len(changed)
			changed = changed[:0]
			clear(used)
		}
	}
	if err := x.putPaths(changed, used); err != nil {
		return stats, err
	}
	stats.Added += len(changed)
	var gone []string
	for hash := range indexed {
		if present[hash] {
			continue
		}
		// An upload may have stored it since the listing.
		if _, err := store.Stat(ctx, hash+".narinfo"); invalid[hash] || errors.Is(err, fs.ErrNotExist) {
			gone = append(gone, hash)
		}
	}
	if err := x.Delete(gone...); err != nil {
		return stats, err
	}
	stats.Removed = len(gone)
	return stats, x.db.Update(x.setComplete)
}

// versions returns the narinfo version of every record, without decoding
// the rest of them.
func (x *Index) versions() (map[string]string, error) {
	versions := map[string]string{}
	err := x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(pathsBucket).ForEach(func(k, v []byte) error {
			var record struct {
				Version string `json:"version"`
			}
			if err := json.Unmarshal(v, &record); err != nil {
				return fmt.Errorf("index record of %s: %w", k, err)
			}
			versions[string(k)] = record.Version
			return nil
		})
	})
	return versions, err
}

// putPaths stores records as they are, and the use times the index does
// not have yet.
func (x *Index) putPaths(paths []Path, used map[string]time.Time) error {
	if len(paths) == 0 {
		return nil
	}
	return x.db.Update(func(tx *bolt.Tx) error {
		b, served := tx.Bucket(pathsBucket), tx.Bucket(servedBucket)
		for _, p := range paths {
			if err := putJSON(b, p.Hash, p); err != nil {
				return err
			}
			if at, ok := used[p.Hash]; ok && served.Get([]byte(p.Hash)) == nil {
				if err := served.Put([]byte(p.Hash), servedValue(at)); err != nil {
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
	return x.db.Update(func(tx *bolt.Tx) error {
		b, paths := tx.Bucket(runsBucket), tx.Bucket(pathsBucket)
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
					record, found, err := getPath(paths, hash)
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
		for hash, p := range adopted {
			if err := putJSON(paths, hash, p); err != nil {
				return err
			}
		}
		return nil
	})
}
