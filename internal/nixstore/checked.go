package nixstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ErrChanged is a store path whose files no longer make the NAR its
// database entry describes.
var ErrChanged = errors.New("the store path's files do not match its registration")

// narTailSize is the NAR's last string, the root node's ")": its length
// and the padded byte.
const narTailSize = 16

// WriteCheckedNar writes the NAR of the file tree at fsPath to w, as
// WriteNar does, and checks it against the size and hash the database
// recorded. Its last 16 bytes are held back until the whole NAR has been
// hashed: a tree that does not make the recorded NAR (changed, or
// collected while it was read) ends short with ErrChanged, so a client's
// download fails instead of unpacking something else.
func WriteCheckedNar(w io.Writer, fsPath string, info *PathInfo) error {
	c := &checkingWriter{tail: &iox.TailWriter{W: w, Hold: narTailSize}, hash: sha256.New(), limit: int64(info.NarSize)}
	size, err := WriteNar(c, fsPath)
	if err != nil {
		return err
	}
	if size != c.limit {
		return fmt.Errorf("%w: its NAR has %d bytes, the database says %d", ErrChanged, size, c.limit)
	}
	if got := c.hash.Sum(nil); !bytes.Equal(got, info.NarHash.Digest()) {
		return fmt.Errorf("%w: its NAR hash is %s, the database says %s", ErrChanged,
			nixhash.MustNewHashWithEncoding(nixhash.SHA256, got, nixhash.NixBase32, true), info.NarHash)
	}
	return c.tail.Release()
}

// checkingWriter hashes what it passes on to a TailWriter, and fails as
// soon as more than limit bytes come.
type checkingWriter struct {
	tail    *iox.TailWriter
	hash    hash.Hash
	limit   int64
	written int64
}

func (c *checkingWriter) Write(p []byte) (int, error) {
	if c.written+int64(len(p)) > c.limit {
		return 0, fmt.Errorf("%w: its NAR is larger than the %d bytes the database says", ErrChanged, c.limit)
	}
	c.written += int64(len(p))
	c.hash.Write(p)
	return c.tail.Write(p)
}
