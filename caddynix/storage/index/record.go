package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	bolt "go.etcd.io/bbolt"
)

// A path's record is binary, as small as it can be read back exactly, so
// that the index of a million paths is a few hundred megabytes and reading
// every record allocates little:
//
//	flags                     1 byte
//	version                   string
//	store path                string: the part after the hash, or all of it
//	NAR URL                   1 byte + 32 bytes, or string
//	file, NAR, narinfo size   uvarints
//	pushed at                 varint, Unix nanoseconds (0: unknown)
//	last pushed at            varint, nanoseconds after pushed at
//	references                uvarint count, then 20 bytes each, or strings
//	pusher                    8 bytes, the key of its record in pushers
//
// A string is a uvarint length and its bytes. Hashes that nixbase32 spells
// canonically are stored as their bytes; anything else is stored as
// written.
const (
	flagPullRequestOnly = 1 << iota
	flagPusher
	// flagStorePathSplit: the store path is DefaultStoreDir, "/", the
	// record's hash, and the stored string.
	flagStorePathSplit
	// flagNarURLCompact: the NAR URL is nar/<file hash>.nar<extension>,
	// stored as the extension's code and the hash's 32 bytes.
	flagNarURLCompact
	// flagReferencesCompact: every reference is stored as 20 bytes.
	flagReferencesCompact
)

// DefaultStoreDir is the store directory whose paths' records leave it
// out.
const DefaultStoreDir = "/nix/store"

// narExtensions are the NAR URL endings a compact record can name, by
// code; their order is part of the format.
var narExtensions = []string{".nar", ".nar.xz", ".nar.zst", ".nar.bz2", ".nar.br", ".nar.gz", ".nar.lz4", ".nar.lzip"}

// keyLen is the length of the key of a path whose hash part nixbase32
// spells, which every store path's does: its 20 bytes.
const keyLen = 20

// KeyOf is the index's key of the path with hash part hash: its 20 bytes
// where hash is nixbase32, and otherwise hash itself, after a NUL byte
// when it is 20 bytes long.
func KeyOf(hash string) []byte {
	if len(hash) == hashLen {
		// 32 digits of 5 bits are 20 bytes: every spelling is canonical.
		if key, err := nixbase32.DecodeString(hash); err == nil {
			return key
		}
	}
	if len(hash) == keyLen {
		return append([]byte{0}, hash...)
	}
	return []byte(hash)
}

// HashOf is the hash part of the path whose key is key.
func HashOf(key []byte) string {
	switch {
	case len(key) == keyLen:
		return nixbase32.EncodeToString(key)
	case len(key) == keyLen+1 && key[0] == 0:
		return string(key[1:])
	}
	return string(key)
}

// errTruncated is a record that ends early.
var errTruncated = errors.New("record ends early")

// encodePath writes p's record, its pusher given by pusherKey.
func encodePath(p *Path, pusherKey []byte) []byte {
	buf := make([]byte, 1, 128+20*len(p.References))
	var flags byte
	if p.PullRequestOnly {
		flags |= flagPullRequestOnly
	}
	buf = appendString(buf, p.Version)
	if rest, ok := strings.CutPrefix(p.StorePath, DefaultStoreDir+"/"+p.Hash); ok && p.Hash != "" {
		flags |= flagStorePathSplit
		buf = appendString(buf, rest)
	} else {
		buf = appendString(buf, p.StorePath)
	}
	if code, hash, ok := compactNarURL(p.NarURL); ok {
		flags |= flagNarURLCompact
		buf = append(append(buf, code), hash...)
	} else {
		buf = appendString(buf, p.NarURL)
	}
	buf = binary.AppendUvarint(buf, uint64(p.FileSize))
	buf = binary.AppendUvarint(buf, uint64(p.NarSize))
	buf = binary.AppendUvarint(buf, uint64(p.NarinfoSize))
	pushed := unixNano(p.PushedAt)
	buf = binary.AppendVarint(buf, pushed)
	buf = binary.AppendVarint(buf, unixNano(p.LastPushedAt)-pushed)
	buf = binary.AppendUvarint(buf, uint64(len(p.References)))
	if raw, ok := compactHashes(p.References, hashLen); ok {
		flags |= flagReferencesCompact
		buf = append(buf, raw...)
	} else {
		for _, ref := range p.References {
			buf = appendString(buf, ref)
		}
	}
	if pusherKey != nil {
		flags |= flagPusher
		buf = append(buf, pusherKey...)
	}
	buf[0] = flags
	return buf
}

// decodePath reads the record data of the path with hash part hash, and
// returns its pusher's key, if it has one.
func decodePath(hash string, data []byte) (Path, []byte, error) {
	r := recordReader{data: data}
	flags := r.byte()
	p := Path{Hash: hash, PullRequestOnly: flags&flagPullRequestOnly != 0}
	p.Version = r.string()
	if p.StorePath = r.string(); flags&flagStorePathSplit != 0 {
		p.StorePath = DefaultStoreDir + "/" + hash + p.StorePath
	}
	if flags&flagNarURLCompact != 0 {
		code := r.byte()
		fileHash := r.bytes(32)
		if int(code) < len(narExtensions) {
			p.NarURL = "nar/" + nixbase32.EncodeToString(fileHash) + narExtensions[code]
		} else {
			r.err = fmt.Errorf("unknown NAR extension code %d", code)
		}
	} else {
		p.NarURL = r.string()
	}
	p.FileSize = int64(r.uvarint())
	p.NarSize = int64(r.uvarint())
	p.NarinfoSize = int64(r.uvarint())
	pushed := r.varint()
	p.PushedAt = fromUnixNano(pushed)
	p.LastPushedAt = fromUnixNano(pushed + r.varint())
	if n := r.uvarint(); n > 0 && r.err == nil {
		if n > uint64(len(data)) {
			return Path{}, nil, fmt.Errorf("index record of %s: %d references in %d bytes", hash, n, len(data))
		}
		p.References = make([]string, n)
		for i := range p.References {
			if flags&flagReferencesCompact != 0 {
				p.References[i] = nixbase32.EncodeToString(r.bytes(20))
			} else {
				p.References[i] = r.string()
			}
		}
	}
	var pusherKey []byte
	if flags&flagPusher != 0 {
		pusherKey = r.bytes(pusherKeyLen)
	}
	if r.err == nil && len(r.data) > 0 {
		r.err = fmt.Errorf("%d bytes after the record", len(r.data))
	}
	if r.err != nil {
		return Path{}, nil, fmt.Errorf("index record of %s: %w", hash, r.err)
	}
	return p, pusherKey, nil
}

// unixNano is t in Unix nanoseconds, and 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromUnixNano is unixNano's inverse.
func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// recordVersion reads only the version of a record.
func recordVersion(data []byte) (string, error) {
	r := recordReader{data: data}
	r.byte()
	version := r.string()
	return version, r.err
}

// compactNarURL splits nar/<hash>.nar<extension> into the extension's code
// and the hash's bytes, when nixbase32 spells them back exactly.
func compactNarURL(url string) (byte, []byte, bool) {
	rest, ok := strings.CutPrefix(url, "nar/")
	if !ok || len(rest) < 52 {
		return 0, nil, false
	}
	for code := len(narExtensions) - 1; code >= 0; code-- {
		if rest[52:] == narExtensions[code] {
			raw, ok := compactHashes([]string{rest[:52]}, 52)
			return byte(code), raw, ok
		}
	}
	return 0, nil, false
}

// compactHashes decodes nixbase32 hashes of length chars (32 for a
// path's hash part, 52 for a SHA-256) into their bytes, when each is
// spelled canonically, so that encoding gives it back.
func compactHashes(hashes []string, length int) ([]byte, bool) {
	out := make([]byte, 0, len(hashes)*nixbase32.DecodedLen(length))
	for _, h := range hashes {
		if len(h) != length {
			return nil, false
		}
		raw, err := nixbase32.DecodeString(h)
		if err != nil || nixbase32.EncodeToString(raw) != h {
			return nil, false
		}
		out = append(out, raw...)
	}
	return out, true
}

func appendString(buf []byte, s string) []byte {
	return append(binary.AppendUvarint(buf, uint64(len(s))), s...)
}

// recordReader reads a record's fields in turn; the first fault sticks in
// err and every later read returns zero values.
type recordReader struct {
	data []byte
	err  error
}

func (r *recordReader) bytes(n int) []byte {
	if r.err != nil || len(r.data) < n {
		r.fail()
		return make([]byte, n)
	}
	b := r.data[:n]
	r.data = r.data[n:]
	return b
}

func (r *recordReader) byte() byte { return r.bytes(1)[0] }

func (r *recordReader) string() string {
	n := r.uvarint()
	if n > uint64(len(r.data)) {
		r.fail()
		return ""
	}
	return string(r.bytes(int(n)))
}

func (r *recordReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.data)
	if r.err != nil || n <= 0 {
		r.fail()
		return 0
	}
	r.data = r.data[n:]
	return v
}

func (r *recordReader) varint() int64 {
	v, n := binary.Varint(r.data)
	if r.err != nil || n <= 0 {
		r.fail()
		return 0
	}
	r.data = r.data[n:]
	return v
}

// fail records that the record ended early, unless an earlier fault is
// recorded.
func (r *recordReader) fail() {
	if r.err == nil {
		r.err = errTruncated
	}
}

// pusherKeyLen is the length of a pusher's key: the first bytes of the
// SHA-256 of its JSON, so that the paths one job pushed share one record.
const pusherKeyLen = 8

// putPusher stores who (unless it is stored already) and returns its key.
func putPusher(tx *bolt.Tx, who *Pusher) ([]byte, error) {
	if who == nil {
		return nil, nil
	}
	data, err := json.Marshal(who)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(data)
	key := digest[:pusherKeyLen]
	b := tx.Bucket(pushersBucket)
	if b.Get(key) == nil {
		if err := b.Put(key, data); err != nil {
			return nil, err
		}
	}
	return key, nil
}

// getPusher reads the pusher stored under key.
func getPusher(tx *bolt.Tx, key []byte) (*Pusher, error) {
	data := tx.Bucket(pushersBucket).Get(key)
	if data == nil {
		return nil, fmt.Errorf("no pusher %x in the index", key)
	}
	who := new(Pusher)
	if err := json.Unmarshal(data, who); err != nil {
		return nil, fmt.Errorf("index pusher %x: %w", key, err)
	}
	return who, nil
}

// putPath stores p's record.
func putPath(tx *bolt.Tx, p *Path) error {
	key, err := putPusher(tx, p.Pusher)
	if err != nil {
		return err
	}
	b, k, record := tx.Bucket(pathsBucket), KeyOf(p.Hash), encodePath(p, key)
	// Putting an unchanged record still rewrites its page: a full reindex
	// would rewrite every page of the index.
	if bytes.Equal(b.Get(k), record) {
		return nil
	}
	return b.Put(k, record)
}

// getPath reads the record of the path with hash part hash.
func getPath(tx *bolt.Tx, hash string) (Path, bool, error) {
	data := tx.Bucket(pathsBucket).Get(KeyOf(hash))
	if data == nil {
		return Path{}, false, nil
	}
	p, pusherKey, err := decodePath(hash, data)
	if err != nil {
		return Path{}, false, err
	}
	if pusherKey != nil {
		if p.Pusher, err = getPusher(tx, pusherKey); err != nil {
			return Path{}, false, err
		}
	}
	return p, true, nil
}
