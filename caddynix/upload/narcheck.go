package upload

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// NarMeta is what a NAR was found to hold: the sha256 and size of the
// file as sent, and of the NAR inside once decompressed.
type NarMeta struct {
	FileHash [sha256.Size]byte
	FileSize int64
	NarHash  [sha256.Size]byte
	NarSize  int64
}

// smallXzNar is the size up to which an xz NAR is read whole before it is
// checked: no more than the copy buffer a larger one takes.
const smallXzNar = 1 << 20

// ReceiveNar copies body to f, hashing it, while a second goroutine
// decompresses the same bytes and hashes the NAR inside. Memory stays
// bounded: nothing is buffered beyond the decompressor's window, which for
// xz is no larger than largestBlock when that is not negative.
func ReceiveNar(f io.Writer, body io.Reader, compression string, max, largestBlock int64) (NarMeta, error) {
	var meta NarMeta
	fileHasher := sha256.New()
	pr, pw := io.Pipe()
	type narResult struct {
		hash   []byte
		size   int64
		err    error
		badNar error
	}
	done := make(chan narResult, 1)
	go func() {
		res := narResult{}
		defer func() {
			// Keep reading, so the writer never blocks on a failed decoder.
			_, _ = io.Copy(io.Discard, pr)
			done <- res
		}()
		plain, release, err := nixfmt.DecompressorOfBlocks(compression, pr, largestBlock)
		if err != nil {
			res.err = err
			return
		}
		defer release()
		narHasher := sha256.New()
		counted := &iox.CountingReader{R: io.TeeReader(io.LimitReader(plain, max+1), narHasher)}
		res.badNar = nixfmt.CheckNar(counted)
		// Whatever follows a NAR, or is left of a broken one, is hashed
		// and counted too, so that the size limit and decoding errors
		// still show.
		_, res.err = io.Copy(io.Discard, counted)
		res.size, res.hash = counted.N, narHasher.Sum(nil)
	}()

	// Large chunks: fewer system calls and hand-offs to the decompressor.
	// A body already in memory needs no more than a small one.
	bufSize := 1 << 20
	if _, inMemory := body.(*bytes.Reader); inMemory {
		bufSize = 64 << 10
	}
	buf := make([]byte, bufSize)
	n, copyErr := io.CopyBuffer(io.MultiWriter(f, fileHasher, pw), io.LimitReader(body, max+1), buf)
	pw.CloseWithError(copyErr)
	res := <-done
	switch {
	case copyErr != nil:
		return meta, fmt.Errorf("receiving the NAR: %w", copyErr)
	case n > max:
		return meta, reject(statusTooLarge, "too_large", "NAR is larger than max_nar_size (%d bytes)", max)
	case res.err != nil:
		return meta, reject(statusBadRequest, "bad_compression", "the body is not valid %s data: %v", compression, res.err)
	case res.size > max:
		return meta, reject(statusTooLarge, "too_large", "the decompressed NAR is larger than max_nar_size (%d bytes)", max)
	case res.badNar != nil:
		return meta, reject(statusBadRequest, "not_a_nar", "the body is not a whole NAR after %s decompression: %v", compression, res.badNar)
	}
	copy(meta.FileHash[:], fileHasher.Sum(nil))
	copy(meta.NarHash[:], res.hash)
	meta.FileSize, meta.NarSize = n, res.size
	return meta, nil
}

// putNarInfo stores a narinfo, the commit point of a path's upload: it is
// accepted only when its NAR is stored and matches it, and its references
// are already in the cache. A path the cache already holds is never
// Matches checks a narinfo's hashes and sizes against a NAR's.
func (meta NarMeta) Matches(info *narinfo.NarInfo) error {
	switch {
	case info.FileHash != nil && !bytes.Equal(info.FileHash.Digest(), meta.FileHash[:]):
		return reject(statusBadRequest, "file_hash_mismatch", "FileHash %s does not match the NAR's sha256:%s", info.FileHash, nixbase32.EncodeToString(meta.FileHash[:]))
	case info.FileSize != 0 && int64(info.FileSize) != meta.FileSize:
		return reject(statusBadRequest, "file_size_mismatch", "FileSize %d does not match the NAR's %d bytes", info.FileSize, meta.FileSize)
	case !bytes.Equal(info.NarHash.Digest(), meta.NarHash[:]):
		return reject(statusBadRequest, "nar_hash_mismatch", "NarHash %s does not match the NAR's sha256:%s", info.NarHash, nixbase32.EncodeToString(meta.NarHash[:]))
	case int64(info.NarSize) != meta.NarSize:
		return reject(statusBadRequest, "nar_size_mismatch", "NarSize %d does not match the NAR's %d bytes", info.NarSize, meta.NarSize)
	}
	return nil
}
