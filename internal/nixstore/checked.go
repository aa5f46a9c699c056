package nixstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ErrChanged is a store path whose files no longer make the NAR its
// database entry describes.
var ErrChanged = errors.New("the store path's files do not match its registration")

// narEnd is a NAR's last string, the root node's ")": its length and the
// padded byte.
var narEnd = []byte{1, 0, 0, 0, 0, 0, 0, 0, ')', 0, 0, 0, 0, 0, 0, 0}

// WriteCheckedNar writes the NAR of the file tree at fsPath to w, as
// WriteNar does, and checks it against the size and hash the database
// recorded. Its last 16 bytes are held back until the whole NAR has been
// hashed: a tree that does not make the recorded NAR (changed, or
// collected while it was read) ends short with ErrChanged, so a client's
// download fails instead of unpacking something else.
func WriteCheckedNar(w io.Writer, fsPath string, info *PathInfo) error {
	return writeChecked(w, hostTree{}, fsPath, info, sha256.New())
}

// WriteCheckedNarIn is WriteCheckedNar for the store path name inside
// root, a store someone else controls: however its symlinks point, and
// whatever it swaps while being read, nothing outside root is read.
func WriteCheckedNarIn(w io.Writer, root *os.Root, name string, info *PathInfo) error {
	return writeChecked(w, root, name, info, sha256.New())
}

// WriteKnownNar is WriteCheckedNar for a path whose files were found to
// make its registered NAR before: it checks the size only, so file
// contents go to w's ReadFrom (sendfile(2) for a connection) without
// being read here. A path collected meanwhile still ends short.
func WriteKnownNar(w io.Writer, fsPath string, info *PathInfo) error {
	return writeChecked(w, hostTree{}, fsPath, info, nil)
}

func writeChecked(w io.Writer, files tree, fsPath string, info *PathInfo, hasher hash.Hash) error {
	bufp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bufp)
	limit := int64(info.NarSize) - int64(len(narEnd))
	out := &limitWriter{w: w, limit: limit}
	n := &narWalker{files: files, out: out, buf: *bufp, sendfile: hasher == nil}
	if hasher != nil {
		n.out = io.MultiWriter(hasher, out)
	}
	if err := n.archive(fsPath); err != nil {
		return err
	}
	if out.n != limit {
		return fmt.Errorf("%w: its NAR has %d bytes, the database says %d", ErrChanged, out.n+int64(len(narEnd)), info.NarSize)
	}
	if hasher != nil {
		hasher.Write(narEnd)
		if got := hasher.Sum(nil); !bytes.Equal(got, info.NarHash.Digest()) {
			return fmt.Errorf("%w: its NAR hash is %s, the database says %s", ErrChanged,
				nixhash.MustNewHashWithEncoding(nixhash.SHA256, got, nixhash.NixBase32, true), info.NarHash)
		}
	}
	_, err := w.Write(narEnd)
	return err
}

// limitWriter counts what it passes on, and fails once more than limit
// bytes come.
type limitWriter struct {
	w     io.Writer
	n     int64
	limit int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n+int64(len(p)) > l.limit {
		return 0, l.overflow()
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

// ReadFrom passes r on to the writer's ReadFrom, where it has one; what
// goes past the limit is only found afterwards, and fails then.
func (l *limitWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := l.w.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{l.w}, r)
	}
	l.n += n
	if err == nil && l.n > l.limit {
		err = l.overflow()
	}
	return n, err
}

func (l *limitWriter) overflow() error {
	return fmt.Errorf("%w: its NAR is larger than the %d bytes the database says", ErrChanged, l.limit+int64(len(narEnd)))
}
