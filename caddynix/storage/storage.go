// Package storage is where a nix_cache keeps its files. Serving, uploads,
// verify and collection go through Store, so that a backend (a directory,
// later an S3 bucket) plugs in without touching the handler. Names are
// slash-separated and relative to the cache's root, in the layout of a
// `file://` binary cache: nix-cache-info, <hash>.narinfo, nar/…, log/…,
// realisations/…; the handler checks them before they reach a backend.
//
// It knows nothing of Nix's formats, HTTP or Caddy: a backend stores
// bytes under names.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// Info describes a stored object.
type Info struct {
	// Name is the object's name below the root.
	Name    string
	Size    int64
	ModTime time.Time
	// Version changes whenever the object is replaced: for a directory,
	// its inode, size and modification time; for S3, its ETag.
	Version string
	// UsedAt is when the object was last used, where the backend keeps it
	// (a file's access time); zero otherwise.
	UsedAt time.Time
	// ContentEncoding is how the object's bytes are encoded, when the
	// backend keeps that beside them (an S3 object written by Nix with
	// ls-compression or log-compression has Content-Encoding br); a reader
	// of Open's bytes must undo it, or a server pass it on. Empty: none.
	ContentEncoding string
}

// Object is a stored object open for reading, with Range support through
// Seek and ReadAt. A directory backend hands out *os.File, so that the
// kernel can send it.
type Object interface {
	io.ReadSeekCloser
	io.ReaderAt
}

// Upload is an object being written. Nothing is visible under its name
// until Commit or CommitNew, and a reader never sees it half-written.
type Upload interface {
	io.Writer
	// ReaderAt reads back what was written so far, for checks before
	// the commit.
	io.ReaderAt
	// Commit makes the object visible under its name, durably, replacing
	// what was there.
	Commit() error
	// CommitNew makes the object visible only if nothing is there yet,
	// and reports whether it did; the upload is gone either way.
	CommitNew() (bool, error)
	// Abort drops the upload; after a commit it does nothing.
	Abort()
}

// ChunkedUpload is an Upload that also takes its bytes at any offset, in
// any order and from several goroutines at once, for clients that send
// one object as parallel chunks.
type ChunkedUpload interface {
	Upload
	io.WriterAt
}

// Store is a cache's storage. Missing objects are reported with an error
// that wraps fs.ErrNotExist.
type Store interface {
	// Stat describes the object name.
	Stat(ctx context.Context, name string) (Info, error)
	// Open opens the object name for reading.
	Open(ctx context.Context, name string) (Object, Info, error)
	// Create starts writing the object name.
	Create(ctx context.Context, name string) (Upload, error)
	// Delete removes the object name; a missing one is no error.
	Delete(ctx context.Context, name string) error
	// List returns the objects directly below the directory dir ("" for
	// the root), in name order, without uploads in progress.
	List(ctx context.Context, dir string) ([]Info, error)
	// Close releases the store.
	Close() error
}

// Walker is a Store that can hand out a directory's listing as it reads
// it, so that listing a million objects does not hold them all.
type Walker interface {
	// Walk calls fn with each object directly below the directory dir
	// ("" for the root), in no particular order, without uploads in
	// progress, and stops at fn's first error, which it returns.
	Walk(ctx context.Context, dir string, fn func(Info) error) error
}

// Walk calls fn with each object directly below dir, as store's Walk
// does, or from its List when it has no Walk.
func Walk(ctx context.Context, store Store, dir string, fn func(Info) error) error {
	if w, ok := store.(Walker); ok {
		return w.Walk(ctx, dir, fn)
	}
	infos, err := store.List(ctx, dir)
	if err != nil {
		return err
	}
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// ReadAll reads the object name, with its Content-Encoding undone, up to
// one byte past limit, so that a check of the size can tell a larger one.
func ReadAll(ctx context.Context, store Store, name string, limit int64) ([]byte, error) {
	obj, info, err := store.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = obj.Close() }()
	body, release, err := nixfmt.ContentDecoder(info.ContentEncoding, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer release()
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil && info.ContentEncoding != "" {
		return nil, fmt.Errorf("decoding %s (Content-Encoding %s): %w", name, info.ContentEncoding, err)
	}
	return data, err
}

// WriteAll replaces the object name with data.
func WriteAll(ctx context.Context, store Store, name string, data []byte) error {
	up, err := store.Create(ctx, name)
	if err != nil {
		return err
	}
	defer up.Abort()
	if _, err := up.Write(data); err != nil {
		return err
	}
	return up.Commit()
}

// Sweeper is a Store whose writers can leave temporary objects behind
// when they die, and that can remove them.
type Sweeper interface {
	// RemoveAbandoned removes what writers that are no longer running
	// left behind, and returns the names it removed.
	RemoveAbandoned(ctx context.Context) ([]string, error)
}

// TemporaryLister is a Store that can list what its writers hold: the
// uploads of live writers, and what dead ones left behind.
type TemporaryLister interface {
	Temporaries(ctx context.Context) (live, abandoned []string, err error)
}

// Leaser is a Store that several processes share, in which one of them at a
// time can hold a lease: an object naming its holder and when it expires,
// written with conditional writes.
type Leaser interface {
	// TryLease takes the lease name for holder for ttl, or extends it if
	// holder has it. It reports whether holder has it now and, if not,
	// who does and until when.
	TryLease(ctx context.Context, name, holder string, ttl time.Duration) (ok bool, current string, err error)
	// ReleaseLease gives the lease up, if holder has it.
	ReleaseLease(ctx context.Context, name, holder string) error
}

// SpaceReporter is a Store on a filesystem that can say how many bytes it
// can still take.
type SpaceReporter interface {
	FreeSpace() (int64, error)
}

// LeaseReader is a Leaser that can say who holds a lease without taking
// it.
type LeaseReader interface {
	// LeaseHolder returns who holds the lease name and until when; an
	// empty holder when nobody does.
	LeaseHolder(ctx context.Context, name string) (holder string, until time.Time, err error)
}

// Watcher is a Store that can report changes to its objects, so that
// what is derived from an object can be kept until it changes without a
// look at the object on every use.
type Watcher interface {
	// Watch starts recording changes to the objects directly in the
	// storage's root. It fails where the storage can change without
	// notice, such as a network filesystem.
	Watch() (Changes, error)
}

// Changes are the changes a Watcher records.
type Changes interface {
	// Drain calls changed with the name of each object written, replaced
	// or removed since the last call, and with "" when changes may have
	// been missed. Every change made before the call is reported. An error
	// means changes are no longer recorded.
	Drain(changed func(name string)) error
	Close() error
}

// Forewarned are Changes of storage that several nodes share. A change
// another node makes is not recorded there but announced ahead of time,
// and a change no node makes (an object deleted behind every node's back)
// is seen only at the next look.
type Forewarned interface {
	// Announced reports whether a change to the object name is announced
	// or may be: what is derived from it is checked at each use.
	Announced(name string) bool
	// TrustFor is how long what is derived from an object is used without
	// a look at it: how late, at most, a change no node announces is seen.
	TrustFor() time.Duration
}

// Presigner is a Store whose objects a client can fetch directly, through
// a URL signed for a limited time.
type Presigner interface {
	PresignGet(ctx context.Context, name string, ttl time.Duration) (string, error)
}

// UseRecorder is a Store that can note on an object when it was last used,
// so that retention's use times outlive the index.
type UseRecorder interface {
	RecordUse(ctx context.Context, name string, at time.Time) error
}

// ErrOutsideRoot is wrapped by the errors of a name that resolves to
// something outside the cache's root, such as a symlink leading out: not
// the cache's, and asked for by anyone, so not worth an error log line.
var ErrOutsideRoot = errors.New("outside the cache root")
