package index

import (
	"bytes"
	"encoding/binary"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Path is what the index knows of one store path, keyed by the hash part
// of its name (the name of its narinfo).
type Path struct {
	Hash      string `json:"-"`
	StorePath string `json:"store_path"`
	// NarURL is the NAR file the narinfo names, e.g. nar/<filehash>.nar.xz.
	NarURL   string `json:"nar_url"`
	FileSize int64  `json:"file_size"`
	NarSize  int64  `json:"nar_size"`
	// NarinfoSize is the size of the narinfo file itself.
	NarinfoSize int64 `json:"narinfo_size"`
	// References are the hash parts of the paths it references, itself
	// left out.
	References []string `json:"references,omitempty"`
	// Version is the narinfo file's storage version when it was indexed;
	// another version means the file changed and is indexed again.
	Version string `json:"version"`
	// PushedAt is when it was first stored: the upload, or for a path
	// found in the files, the narinfo's modification time.
	PushedAt time.Time `json:"pushed_at"`
	// LastPushedAt is when it was last uploaded, again or first.
	LastPushedAt time.Time `json:"last_pushed_at"`
	// Pusher is who uploaded it first; nil for a path found in the files.
	Pusher *Pusher `json:"pusher,omitempty"`
	// PullRequestOnly is set while every upload of it came from a
	// pull-request job: retention lets such paths go first.
	PullRequestOnly bool `json:"pull_request_only,omitempty"`
}

// Pusher is who uploaded a path: a configured token, or a CI job.
type Pusher struct {
	// Token names the configured upload token, e.g. "token 1" or
	// "token_file /run/secrets/upload".
	Token string `json:"token,omitempty"`
	Job   *Job   `json:"job,omitempty"`
}

// RecordPush records an upload of p (first or again) by pusher at time
// at: a new path is stored as it is; a known one keeps its first pusher
// and gets the new push time.
func (x *Index) RecordPush(p Path, pusher *Pusher, at time.Time) error {
	return x.update(func(tx *bolt.Tx) error {
		pullRequest := pusher != nil && pusher.Job != nil && pusher.Job.PullRequest
		switch old, ok, err := getPath(tx, p.Hash); {
		case err != nil:
			return err
		case ok && old.StorePath == p.StorePath && old.Pusher != nil:
			p.PushedAt, p.Pusher = old.PushedAt, old.Pusher
			p.PullRequestOnly = old.PullRequestOnly && pullRequest
		case ok && old.StorePath == p.StorePath:
			// Found in the files, pusher unknown: this is the first one
			// known, as when the index adopts run records.
			p.PushedAt, p.Pusher, p.PullRequestOnly = old.PushedAt, pusher, pullRequest
		default:
			p.PushedAt, p.Pusher, p.PullRequestOnly = at, pusher, pullRequest
		}
		p.LastPushedAt = at
		if err := putPath(tx, &p); err != nil {
			return err
		}
		if pusher != nil && pusher.Job != nil {
			return addRunPath(tx, pusher.Job, p.Hash, at)
		}
		return nil
	})
}

// Get returns the index's record of the path with hash part hash.
func (x *Index) Get(hash string) (Path, bool, error) {
	var p Path
	var ok bool
	err := x.Read(func(s Snapshot) error {
		var err error
		p, ok, err = s.Get(hash)
		return err
	})
	return p, ok, err
}

// Paths returns every indexed path by hash.
func (x *Index) Paths() (map[string]*Path, error) {
	paths := map[string]*Path{}
	err := x.Read(func(s Snapshot) error {
		return s.Each(func(p *Path) error {
			paths[p.Hash] = p
			return nil
		})
	})
	return paths, err
}

// Delete forgets the paths with the given hash parts.
func (x *Index) Delete(hashes ...string) error {
	return x.write(func(tx *bolt.Tx) error {
		paths, served := tx.Bucket(pathsBucket), tx.Bucket(servedBucket)
		for _, hash := range hashes {
			x.touched(tx, 2)
			if err := paths.Delete(KeyOf(hash)); err != nil {
				return err
			}
			if err := served.Delete(KeyOf(hash)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Keys are index keys one after another in one buffer: the key's bytes
// and 4 more each.
type Keys struct {
	data []byte
	ends []uint32
}

// MakeKeys returns Keys with room for n keys of the usual length.
func MakeKeys(n int) Keys {
	return Keys{data: make([]byte, 0, n*keyLen), ends: make([]uint32, 0, n)}
}

// Append adds key.
func (k *Keys) Append(key []byte) {
	k.data = append(k.data, key...)
	k.ends = append(k.ends, uint32(len(k.data)))
}

// Len is how many keys there are.
func (k *Keys) Len() int { return len(k.ends) }

// At is the key i, in the buffer.
func (k *Keys) At(i int) []byte {
	start := uint32(0)
	if i > 0 {
		start = k.ends[i-1]
	}
	return k.data[start:k.ends[i]]
}

// Deletions are paths deleted from the storage, for Forget, in about 32
// bytes each.
type Deletions struct {
	keys     Keys
	versions []uint64
}

// Add notes that p was deleted.
func (d *Deletions) Add(p *Path) {
	d.keys.Append(KeyOf(p.Hash))
	d.versions = append(d.versions, versionDigest(p.Version))
}

// Len is how many deletions d holds.
func (d *Deletions) Len() int { return d.keys.Len() }

// forgetBatch is how many records one transaction of Forget drops. They
// are dropped in the order of their keys, so that a transaction rewrites
// the pages of its own stretch of the index only.
const forgetBatch = 1 << 16

// Forget drops the records of deleted paths, unless a path was stored
// again since (its record has another narinfo version).
func (x *Index) Forget(deleted *Deletions) error {
	order := make([]int, deleted.Len())
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return bytes.Compare(deleted.keys.At(a), deleted.keys.At(b)) })
	for start := 0; start < len(order); start += forgetBatch {
		err := x.write(func(tx *bolt.Tx) error {
			paths, served := tx.Bucket(pathsBucket), tx.Bucket(servedBucket)
			for _, i := range order[start:min(start+forgetBatch, len(order))] {
				x.touched(tx, 2)
				key := deleted.keys.At(i)
				version, err := recordVersion(paths.Get(key))
				if err != nil || versionDigest(version) != deleted.versions[i] {
					continue // gone already, or stored again
				}
				if err := paths.Delete(key); err != nil {
					return err
				}
				if err := served.Delete(key); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// MarkServed records when paths were last served; a time earlier than the
// one recorded, as another node may report, changes nothing.
func (x *Index) MarkServed(served map[string]time.Time) error {
	if len(served) == 0 {
		return nil
	}
	return x.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(servedBucket)
		for hash, at := range served {
			x.touched(tx, 1)
			key := KeyOf(hash)
			if old := b.Get(key); len(old) == 8 && int64(binary.BigEndian.Uint64(old)) >= at.Unix() {
				continue
			}
			if err := b.Put(key, servedValue(at)); err != nil {
				return err
			}
		}
		return nil
	})
}

// servedValue encodes a served time.
func servedValue(at time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(at.Unix()))
}

// Served returns when each path was last served, for the paths that were.
func (x *Index) Served() (map[string]time.Time, error) {
	served := map[string]time.Time{}
	err := x.db.View(func(tx *bolt.Tx) error {
		return scan(tx, servedBucket, func(k, v []byte) error {
			if len(v) == 8 {
				served[HashOf(k)] = time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
			}
			return nil
		})
	})
	return served, err
}
