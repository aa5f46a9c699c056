package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/xz"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

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
