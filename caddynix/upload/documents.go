package upload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"golang.org/x/sync/semaphore"
)

// the served one is generated, but nix creates it when a cache looks new.
func (u *Receiver) putCacheInfo(ctx context.Context, sent Body) error {
	data, err := readSmallBody(sent, nixfmt.MaxSmallDocumentSize)
	if err != nil {
		return err
	}
	if dir := nixfmt.CacheInfoStoreDir(data); dir != "" && dir != u.storeDir {
		return reject(statusBadRequest, "store_dir_mismatch", "StoreDir %s is not this cache's %s", dir, u.storeDir)
	}
	return u.ensureCacheInfoFile(ctx)
}

// putDocument stores a listing, realisation or build log. The body is
// streamed to a temporary file, however well it compresses, so a small
// request can never make the cache hold much in memory; a JSON document is
// then checked within jsonCheckMemory.
func (u *Receiver) putDocument(ctx context.Context, name string, sent Body, limit int64, isJSON bool) error {
	body, release, err := decodedBody(sent, limit)
	if err != nil {
		return err
	}
	defer release()
	up, err := u.store.Create(ctx, name)
	if err != nil {
		return err
	}
	defer up.Abort()
	n, err := io.Copy(up, io.LimitReader(body, limit+1))
	if err != nil {
		return reject(statusBadRequest, "bad_body", "reading the body: %v", err)
	}
	if n > limit {
		return reject(statusTooLarge, "too_large", "%s is larger than %d bytes once decoded", name, limit)
	}
	u.metrics.Received(strings.SplitN(name, "/", 2)[0], n)
	if isJSON {
		if err := checkJSON(ctx, up, n); err != nil {
			return reject(statusBadRequest, "bad_json", "%s is not valid JSON: %v", name, err)
		}
	}
	return up.Commit()
}

// checkJSON checks that the size bytes of f are one JSON document, holding
// them in memory only within jsonCheckMemory.
func checkJSON(ctx context.Context, f io.ReaderAt, size int64) error {
	if err := jsonCheckMemory.Acquire(ctx, max(size, 1)); err != nil {
		return err
	}
	defer jsonCheckMemory.Release(max(size, 1))
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if !json.Valid(data) {
		return errors.New("it does not parse")
	}
	return nil
}

// decodedBody is a request body of at most limit bytes as sent, with its
// Content-Encoding undone; the caller bounds what it reads of the result.
func decodedBody(sent Body, limit int64) (io.Reader, func(), error) {
	if sent.Length > limit {
		return nil, nil, reject(statusTooLarge, "too_large", "body of %d bytes is larger than %d bytes", sent.Length, limit)
	}
	body, release, err := nixfmt.ContentDecoder(sent.Encoding, sent.Reader)
	if err != nil {
		return nil, nil, reject(statusBadRequest, "bad_encoding", "%v", err)
	}
	return body, release, nil
}

// readSmallBody reads a whole request body of at most limit bytes, undoing
// its Content-Encoding.
func readSmallBody(sent Body, limit int64) ([]byte, error) {
	body, release, err := decodedBody(sent, limit)
	if err != nil {
		return nil, err
	}
	defer release()
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, reject(statusBadRequest, "bad_body", "reading the body: %v", err)
	}
	if int64(len(data)) > limit {
		return nil, reject(statusTooLarge, "too_large", "body is larger than %d bytes", limit)
	}
	return data, nil
}

// writeFile atomically replaces name with data.
func (u *Receiver) writeFile(ctx context.Context, name string, data []byte) error {
	if err := storage.WriteAll(ctx, u.store, name, data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// createFile writes name with data unless it exists, and reports whether
// it did.
func (u *Receiver) createFile(ctx context.Context, name string, data []byte) (bool, error) {
	up, err := u.store.Create(ctx, name)
	if err != nil {
		return false, err
	}
	defer up.Abort()
	if _, err := up.Write(data); err != nil {
		return false, fmt.Errorf("writing %s: %w", name, err)
	}
	return up.CommitNew()
}

// ensureCacheInfoFile writes nix-cache-info into the root when it is
// missing, so that the directory stays a complete file:// cache that `nix
// copy --from file://` can read.
func (u *Receiver) ensureCacheInfoFile(ctx context.Context) error {
	if _, err := u.store.Stat(ctx, "nix-cache-info"); err == nil {
		return nil
	}
	return u.writeFile(ctx, "nix-cache-info", []byte("StoreDir: "+u.storeDir+"\n"))
}

// Listings of huge closures run to a few megabytes.
const maxListingSize = 64 << 20

// jsonCheckMemory bounds the memory that checking uploaded JSON documents
// takes at once, whatever the number of uploads: each document waits for
// its size in this budget before it is read into memory.
var jsonCheckMemory = semaphore.NewWeighted(maxListingSize)
