package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/minio/minio-go/v7"
)

// contentType is what `nix copy --to s3://` stores objects with.
func contentType(name string) string {
	switch {
	case strings.HasSuffix(name, ".narinfo"):
		return "text/x-nix-narinfo"
	case name == "nix-cache-info":
		return "text/x-nix-cache-info"
	case strings.HasPrefix(name, "nar/"):
		return "application/x-nix-nar"
	case strings.HasSuffix(name, ".ls") || strings.HasSuffix(name, ".doi"):
		return "application/json"
	case strings.HasPrefix(name, "log/"):
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}

// Create starts writing name.
func (s *Store) Create(ctx context.Context, name string) (storage.Upload, error) {
	if name == "" || path.Clean(name) != name || strings.HasPrefix(name, "/") || strings.HasPrefix(name, "../") {
		return nil, fmt.Errorf("%q is not an object name", name)
	}
	return &upload{ctx: ctx, store: s, name: name, key: s.key(name), buf: make([]byte, 0, min(s.partSize, 64<<10))}, nil
}

// upload streams an object: the first part stays in memory, so that a
// small object is one PUT and can be read back; a larger one becomes a
// multipart upload, one part in memory at a time.
type upload struct {
	ctx      context.Context
	store    *Store
	name     string
	key      string
	buf      []byte
	uploadID string
	parts    []minio.CompletePart
	done     bool
	err      error
}

func (u *upload) Write(p []byte) (int, error) {
	if u.done {
		return 0, errors.New("the upload was already committed or aborted")
	}
	if u.err != nil {
		return 0, u.err
	}
	written := 0
	for len(p) > 0 {
		room := int(u.store.partSize) - len(u.buf)
		take := min(room, len(p))
		if len(u.buf)+take > cap(u.buf) {
			// Straight to a whole part, rather than doubling there and
			// leaving the smaller buffers to the collector.
			whole := make([]byte, len(u.buf), u.store.partSize)
			copy(whole, u.buf)
			u.buf = whole
		}
		u.buf = append(u.buf, p[:take]...)
		p, written = p[take:], written+take
		if len(u.buf) == int(u.store.partSize) {
			if u.err = u.flushPart(); u.err != nil {
				return written, u.err
			}
		}
	}
	return written, nil
}

// sha256Hex is the digest a request's signature covers. Every body is in
// memory when it is sent, so it is signed whole (DisableContentSha256 only
// turns off minio-go's streaming signature): the server checks it, and the
// body needs no aws-chunked encoding, which some servers keep as the
// object's Content-Encoding and hand to clients that follow a redirect.
func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// flushPart sends the buffered bytes as the next part.
func (u *upload) flushPart() error {
	if u.uploadID == "" {
		id, err := u.store.core.NewMultipartUpload(u.ctx, u.store.bucket, u.key, minio.PutObjectOptions{ContentType: contentType(u.name)})
		if err != nil {
			return fmt.Errorf("starting the upload of %s: %w", u.name, err)
		}
		u.uploadID = id
	}
	number := len(u.parts) + 1
	part, err := u.store.core.PutObjectPart(u.ctx, u.store.bucket, u.key, u.uploadID, number,
		bytes.NewReader(u.buf), int64(len(u.buf)), minio.PutObjectPartOptions{Sha256Hex: sha256Hex(u.buf), DisableContentSha256: true})
	if err != nil {
		return fmt.Errorf("uploading part %d of %s: %w", number, u.name, err)
	}
	u.parts = append(u.parts, minio.CompletePart{PartNumber: number, ETag: part.ETag})
	u.buf = u.buf[:0]
	return nil
}

// ReadAt reads back an object that still fits in its first part, which is
// all that checks before a commit need (small JSON documents).
func (u *upload) ReadAt(p []byte, off int64) (int, error) {
	if u.uploadID != "" {
		return 0, fmt.Errorf("%s is larger than one part and cannot be read back before it is committed", u.name)
	}
	if off >= int64(len(u.buf)) {
		return 0, io.EOF
	}
	n := copy(p, u.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Commit makes the object visible under its name.
func (u *upload) Commit() error {
	_, err := u.commit(false)
	return err
}

// CommitNew makes the object visible only if nothing is there yet, with a
// conditional write (If-None-Match: *).
func (u *upload) CommitNew() (bool, error) {
	return u.commit(true)
}

func (u *upload) commit(onlyNew bool) (bool, error) {
	if u.done {
		return false, errors.New("the upload was already committed or aborted")
	}
	if u.err != nil {
		u.Abort()
		return false, u.err
	}
	opts := minio.PutObjectOptions{ContentType: contentType(u.name), DisableContentSha256: true}
	if onlyNew {
		opts.SetMatchETagExcept("*")
	}
	var err error
	if u.uploadID == "" {
		_, err = u.store.core.PutObject(u.ctx, u.store.bucket, u.key, bytes.NewReader(u.buf), int64(len(u.buf)), "", sha256Hex(u.buf), opts)
	} else {
		if len(u.buf) > 0 {
			if err := u.flushPart(); err != nil {
				u.Abort()
				return false, err
			}
		}
		_, err = u.store.core.CompleteMultipartUpload(u.ctx, u.store.bucket, u.key, u.uploadID, u.parts, opts)
	}
	if err != nil {
		u.Abort()
		if onlyNew && minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
			return false, nil
		}
		return false, fmt.Errorf("storing %s: %w", u.name, err)
	}
	u.done, u.buf = true, nil
	return true, nil
}

// Abort drops the upload, and its parts on the server.
func (u *upload) Abort() {
	if u.done {
		return
	}
	u.done, u.buf = true, nil
	if u.uploadID != "" {
		// The request may be gone; the parts must go anyway.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(u.ctx), time.Minute)
		defer cancel()
		_ = u.store.core.AbortMultipartUpload(ctx, u.store.bucket, u.key, u.uploadID)
	}
}

// Interface guard
var _ storage.Upload = (*upload)(nil)
