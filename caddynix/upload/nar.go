package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"sync"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/xz"
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

// putNar stores a NAR under nar/<FileHash>.nar[.ext], streaming it to a
// temporary file while hashing both the file and its decompressed content.
func (u *Receiver) putNar(ctx context.Context, req cacheurl.Request, sent Body) error {
	name := path.Base(req.File)
	compression, ok := nixfmt.NarCompression(req.File)
	if !ok {
		return reject(statusBadRequest, "bad_compression", "%s: unsupported NAR compression (use none, xz, zstd, bzip2 or br)", req.File)
	}
	wantHash, err := nixbase32.DecodeString(name[:52])
	if err != nil {
		return reject(statusBadRequest, "bad_path", "%s: the name is not a nix32 sha256 hash", req.File)
	}
	max := u.maxNarSize
	if sent.Length > max {
		return reject(statusTooLarge, "too_large", "NAR of %d bytes is larger than max_nar_size (%d bytes)", sent.Length, max)
	}
	if _, err := u.store.Stat(ctx, req.File); err == nil {
		// NARs are named by their hash: the same name is the same content.
		return nil
	}
	body, release, err := nixfmt.ContentDecoder(sent.Encoding, sent.Reader)
	if err != nil {
		return reject(statusBadRequest, "bad_encoding", "%v", err)
	}
	defer release()

	largestBlock := int64(-1)
	if compression == "xz" && sent.Length > 0 && sent.Length <= smallXzNar && sent.plain() {
		// Read whole, its index says how large its dictionaries need be:
		// a small NAR then takes kilobytes, not the 8 MiB nix's preset
		// asks for.
		data := make([]byte, sent.Length)
		if _, err := io.ReadFull(body, data); err != nil {
			return fmt.Errorf("receiving the NAR: %w", err)
		}
		if size, err := xz.LargestBlock(data); err == nil {
			largestBlock = size
		}
		body = bytes.NewReader(data)
	}

	up, err := u.store.Create(ctx, req.File)
	if err != nil {
		return err
	}
	defer up.Abort()

	meta, err := ReceiveNar(up, body, compression, max, largestBlock)
	if err != nil {
		return err
	}
	u.metrics.Received("nar", meta.FileSize)
	if !bytes.Equal(meta.FileHash[:], wantHash) {
		return reject(statusBadRequest, "file_hash_mismatch", "the body's sha256 is %s, but the URL names %s", nixbase32.EncodeToString(meta.FileHash[:]), name[:52])
	}
	if err := up.Commit(); err != nil {
		return err
	}
	u.pending.put(req.File, meta)
	return nil
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

// narMetaOf returns the hashes of a stored NAR: from the upload that stored
// it, or, after a restart, by reading it again.
func (u *Receiver) narMetaOf(ctx context.Context, url string) (NarMeta, error) {
	if meta, ok := u.pending.get(url); ok {
		if _, err := u.store.Stat(ctx, url); err == nil {
			return meta, nil
		}
	}
	f, _, err := u.store.Open(ctx, url)
	if err != nil {
		return NarMeta{}, err
	}
	defer func() { _ = f.Close() }()
	compression, _ := nixfmt.NarCompression(url)
	meta, err := ReceiveNar(io.Discard, f, compression, math.MaxInt64-1, -1)
	if err != nil {
		var uerr *Error
		if errors.As(err, &uerr) {
			return NarMeta{}, reject(statusBadRequest, "bad_nar", "the stored NAR %s is unreadable: %v", url, uerr.Msg)
		}
		return NarMeta{}, err
	}
	u.pending.put(url, meta)
	return meta, nil
}

// putCacheInfo accepts nix-cache-info when it agrees with the configuration:
// yet; beyond it, a NAR is read again when its narinfo arrives.
const maxPendingNars = 100000

// pendingNars remembers what uploaded NARs hold until their narinfo comes.
type pendingNars struct {
	mu   sync.Mutex
	nars map[string]NarMeta
}

func (p *pendingNars) put(url string, meta NarMeta) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nars == nil {
		p.nars = make(map[string]NarMeta)
	}
	if len(p.nars) >= maxPendingNars {
		for old := range p.nars {
			delete(p.nars, old)
			break
		}
	}
	p.nars[url] = meta
}

func (p *pendingNars) get(url string) (NarMeta, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	meta, ok := p.nars[url]
	return meta, ok
}

func (p *pendingNars) delete(url string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.nars, url)
}
