package index

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Summary is what a collection plans with of one path, read in place
// from its record without copying it: its byte slices and References are
// valid only during the call that hands it out.
type Summary struct {
	// Key is the path's key in the index (KeyOf its hash part), which
	// orders the summaries.
	Key []byte
	// NarKey stands for the NAR file the narinfo names: records naming
	// the same file have the same key, and NarKey of its name gives it.
	NarKey                uint64
	FileSize, NarinfoSize int64
	// LastPushedAt is in Unix nanoseconds; 0 when unknown.
	LastPushedAt    int64
	PullRequestOnly bool

	refs        []byte
	refCount    int
	refsCompact bool
}

// ReferenceCount is how many paths the record references.
func (s *Summary) ReferenceCount() int { return s.refCount }

// References calls fn with the key of each path the record references;
// fn must not keep it.
func (s *Summary) References(fn func(key []byte)) {
	r := recordReader{data: s.refs}
	for range s.refCount {
		if s.refsCompact {
			fn(r.bytes(keyLen))
		} else {
			n := r.uvarint()
			fn(KeyOf(string(r.bytes(int(n)))))
		}
	}
}

// narKeySeed keys NarKey for the life of the process.
var narKeySeed = maphash.MakeSeed()

// NarKey is the key of the NAR file named url, as Summary.NarKey gives
// it: 64 bits of a digest, so two files are taken for one with odds of
// one in 2^64 per pair.
func NarKey(url string) uint64 {
	var h maphash.Hash
	h.SetSeed(narKeySeed)
	if code, hash, ok := compactNarURL(url); ok {
		_ = h.WriteByte(code)
		_, _ = h.Write(hash)
	} else {
		_ = h.WriteByte(0xff)
		_, _ = h.WriteString(url)
	}
	return h.Sum64()
}

// decodeSummary reads the fields of a record that Summary holds.
func decodeSummary(key, data []byte, s *Summary) error {
	r := recordReader{data: data}
	flags := r.byte()
	r.string() // version
	r.string() // store path
	var h maphash.Hash
	h.SetSeed(narKeySeed)
	if flags&flagNarURLCompact != 0 {
		_ = h.WriteByte(r.byte())
		_, _ = h.Write(r.bytes(32))
	} else {
		n := r.uvarint()
		_ = h.WriteByte(0xff)
		_, _ = h.Write(r.bytes(int(min(n, uint64(len(r.data))))))
	}
	*s = Summary{Key: key, NarKey: h.Sum64(), PullRequestOnly: flags&flagPullRequestOnly != 0, refsCompact: flags&flagReferencesCompact != 0}
	s.FileSize = int64(r.uvarint())
	r.uvarint() // NAR size
	s.NarinfoSize = int64(r.uvarint())
	pushed := r.varint()
	s.LastPushedAt = pushed + r.varint()
	s.refCount = int(r.uvarint())
	s.refs = r.data
	if r.err == nil && s.refCount > len(s.refs) {
		r.err = errTruncated
	}
	if r.err != nil {
		return fmt.Errorf("index record of %s: %w", HashOf(key), r.err)
	}
	return nil
}

// Snapshot is the index as one read transaction sees it, for reads that
// must agree with each other.
type Snapshot struct {
	tx *bolt.Tx
	x  *Index
}

// Read calls fn with a snapshot of the index, valid during the call.
func (x *Index) Read(fn func(Snapshot) error) error {
	return x.db.View(func(tx *bolt.Tx) error { return fn(Snapshot{tx, x}) })
}

// Len is how many paths the index holds. It reads every page of the
// records once.
func (s Snapshot) Len() int {
	n := 0
	_ = scan(s.tx, pathsBucket, func(_, _ []byte) error {
		n++
		return nil
	})
	return n
}

// Summaries calls fn with every path's summary, in the order of their
// keys.
func (s Snapshot) Summaries(fn func(*Summary) error) error {
	var summary Summary
	return scan(s.tx, pathsBucket, func(k, v []byte) error {
		if err := decodeSummary(k, v, &summary); err != nil {
			return err
		}
		return fn(&summary)
	})
}

// Served calls fn with every path's last served time, in the order of
// their keys; key is valid only during the call.
func (s Snapshot) Served(fn func(key []byte, at time.Time) error) error {
	return scan(s.tx, servedBucket, func(k, v []byte) error {
		if len(v) != 8 {
			return nil
		}
		return fn(k, time.Unix(int64(binary.BigEndian.Uint64(v)), 0))
	})
}

// Get returns the record of the path with hash part hash.
func (s Snapshot) Get(hash string) (Path, bool, error) {
	defer s.x.touched(s.tx, 1)
	return getPath(s.tx, hash)
}

// Each calls fn with every path's record, one at a time, in the order of
// their keys.
func (s Snapshot) Each(fn func(*Path) error) error {
	pushers := map[string]*Pusher{}
	return scan(s.tx, pathsBucket, func(k, v []byte) error {
		p, pusherKey, err := decodePath(HashOf(k), v)
		if err != nil {
			return err
		}
		if pusherKey != nil {
			who, ok := pushers[string(pusherKey)]
			if !ok {
				if who, err = getPusher(s.tx, pusherKey); err != nil {
					return err
				}
				pushers[string(pusherKey)] = who
			}
			p.Pusher = who
		}
		return fn(&p)
	})
}
