package nixstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

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
	c := &checkingWriter{out: w, hash: sha256.New(), limit: int64(info.NarSize)}
	if _, err := WriteNar(c, fsPath); err != nil {
		return err
	}
	if c.written+int64(len(c.tail)) != c.limit {
		return fmt.Errorf("%w: its NAR has %d bytes, the database says %d", ErrChanged, c.written+int64(len(c.tail)), c.limit)
	}
	if got := c.hash.Sum(nil); !bytes.Equal(got, info.NarHash.Digest()) {
		return fmt.Errorf("%w: its NAR hash is %s, the database says %s", ErrChanged,
			nixhash.MustNewHashWithEncoding(nixhash.SHA256, got, nixhash.NixBase32, true).String(),
			info.NarHash)
	}
	_, err := w.Write(c.tail)
	return err
}

// checkingWriter hashes and passes on what it is given, except the last
// narTailSize bytes, and fails as soon as more than limit bytes come.
type checkingWriter struct {
	out     io.Writer
	hash    hash.Hash
	limit   int64
	written int64
	tail    []byte
}

func (c *checkingWriter) Write(p []byte) (int, error) {
	if c.written+int64(len(c.tail))+int64(len(p)) > c.limit {
		return 0, fmt.Errorf("%w: its NAR is larger than the %d bytes the database says", ErrChanged, c.limit)
	}
	c.hash.Write(p)
	// Pass on all but the last narTailSize bytes of tail+p.
	if len(p) >= narTailSize {
		if err := c.emit(c.tail); err != nil {
			return 0, err
		}
		c.tail = c.tail[:0]
		if err := c.emit(p[:len(p)-narTailSize]); err != nil {
			return 0, err
		}
		c.tail = append(c.tail, p[len(p)-narTailSize:]...)
		return len(p), nil
	}
	c.tail = append(c.tail, p...)
	if over := len(c.tail) - narTailSize; over > 0 {
		if err := c.emit(c.tail[:over]); err != nil {
			return 0, err
		}
		c.tail = append(c.tail[:0], c.tail[over:]...)
	}
	return len(p), nil
}

func (c *checkingWriter) emit(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := c.out.Write(p)
	c.written += int64(n)
	return err
}
