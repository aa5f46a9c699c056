// Package s3 keeps a nix_cache in a bucket of an S3-compatible server, in
// the layout that `nix copy --to s3://BUCKET` writes (the file:// layout,
// below an optional prefix), so that a bucket written by Nix is served as
// it is and what is stored here can be read by `nix copy --from s3://…`.
//
// Uploads are streamed as multipart uploads with one part in memory at a
// time, whatever their size, and nothing is visible under an object's name
// until its upload completes. Readers see one version of an object: every
// ranged read after the first is conditional on the ETag it started with.
package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Config says where the bucket is and how to sign in.
type Config struct {
	// Bucket is the bucket's name.
	Bucket string
	// Prefix is put before every object's name, e.g. "main/".
	Prefix string
	// Endpoint is the server's URL, e.g. https://s3.example.org.
	Endpoint string
	// Region is the bucket's region; default us-east-1.
	Region string
	// PathStyle addresses the bucket as ENDPOINT/BUCKET rather than
	// BUCKET.ENDPOINT, for servers without virtual hosts.
	PathStyle bool
	// AccessKeyID and SecretAccessKey sign the requests.
	AccessKeyID, SecretAccessKey string
	// PartSize is the size of the parts of a multipart upload, which is
	// what an upload holds in memory; default 16 MiB, at least 5 MiB.
	PartSize int64
	// AbandonedAfter is how old an unfinished multipart upload must be for
	// RemoveAbandoned to take it for a killed writer's and abort it: longer
	// than any upload still running takes, on this node or another. Default:
	// 6 hours.
	AbandonedAfter time.Duration
}

// Default and smallest part sizes; S3 takes at most 10,000 parts, so 16
// MiB parts make objects of up to 156 GiB.
const (
	defaultPartSize = 16 << 20
	minPartSize     = 5 << 20
)

// defaultAbandonedAfter is Config.AbandonedAfter's default.
const defaultAbandonedAfter = 6 * time.Hour

// Store is a cache in a bucket.
type Store struct {
	core           minio.Core
	bucket         string
	prefix         string
	partSize       int64
	location       string
	abandonedAfter time.Duration
}

// Open connects to the bucket and checks that it exists and that the
// credentials are accepted.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("no bucket given")
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("endpoint %q is not a URL such as https://s3.example.org", cfg.Endpoint)
	}
	if cfg.AccessKeyID == "" || cfg.SecretAccessKey == "" {
		return nil, errors.New("no access key id and secret access key given")
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	switch {
	case cfg.PartSize == 0:
		cfg.PartSize = defaultPartSize
	case cfg.PartSize < minPartSize:
		return nil, fmt.Errorf("part size %d is below S3's minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.AbandonedAfter <= 0 {
		cfg.AbandonedAfter = defaultAbandonedAfter
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, ""),
		Secure:       u.Scheme == "https",
		Region:       cfg.Region,
		BucketLookup: lookup,
		// A request is tried three times, backing off up to about a
		// second in all: enough for a dropped connection, while a client
		// of a node whose server is down learns it at once rather than
		// after minio-go's default ten tries.
		MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("setting up the S3 client for %s: %w", cfg.Endpoint, err)
	}
	s := &Store{
		core:           minio.Core{Client: client},
		bucket:         cfg.Bucket,
		prefix:         strings.TrimPrefix(cfg.Prefix, "/"),
		partSize:       cfg.PartSize,
		abandonedAfter: cfg.AbandonedAfter,
		location:       "s3://" + cfg.Bucket + "/" + strings.TrimPrefix(cfg.Prefix, "/") + "?endpoint=" + cfg.Endpoint,
	}
	if s.prefix != "" && !strings.HasSuffix(s.prefix, "/") {
		s.prefix += "/"
	}
	ok, err := client.BucketExists(ctx, cfg.Bucket)
	switch code := minio.ToErrorResponse(err).Code; {
	case err != nil && (code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch"):
		return nil, fmt.Errorf("%s refused the credentials for bucket %s (%s): check the access key id and the secret", cfg.Endpoint, cfg.Bucket, code)
	case err != nil:
		return nil, fmt.Errorf("reaching bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	case !ok:
		return nil, fmt.Errorf("bucket %s does not exist at %s: create it first", cfg.Bucket, cfg.Endpoint)
	}
	return s, nil
}

// Location names the bucket and prefix, for logs and for the index's file
// name.
func (s *Store) Location() string { return s.location }

func (s *Store) key(name string) string { return s.prefix + name }

// notFound turns S3's answers for a missing object into fs.ErrNotExist.
func notFound(name string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey, minio.NoSuchBucket, "NotFound":
		return fmt.Errorf("%s: %w", name, fs.ErrNotExist)
	}
	return err
}

func infoOf(name string, obj minio.ObjectInfo) storage.Info {
	info := storage.Info{Name: name, Size: obj.Size, ModTime: obj.LastModified, Version: obj.ETag}
	switch encoding := strings.ToLower(strings.TrimSpace(obj.ContentEncoding)); encoding {
	case "", "identity", "aws-chunked":
		// aws-chunked describes how a body was uploaded, not the object,
		// though some servers keep it.
	default:
		info.ContentEncoding = strings.TrimPrefix(encoding, "aws-chunked,")
	}
	return info
}

// Stat describes the object name.
func (s *Store) Stat(ctx context.Context, name string) (storage.Info, error) {
	obj, err := s.core.StatObject(ctx, s.bucket, s.key(name), minio.StatObjectOptions{})
	if err != nil {
		return storage.Info{}, notFound(name, err)
	}
	return infoOf(name, obj), nil
}

// Open opens the object name with one GET, whose body serves the reads
// from the start; a read elsewhere fetches that range.
func (s *Store) Open(ctx context.Context, name string) (storage.Object, storage.Info, error) {
	body, obj, _, err := s.core.GetObject(ctx, s.bucket, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, storage.Info{}, notFound(name, err)
	}
	info := infoOf(name, obj)
	return &object{ctx: ctx, store: s, key: s.key(name), size: info.Size, etag: info.Version, body: body}, info, nil
}

// Delete removes the object name; a missing one is no error.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.core.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{})
}

// List returns the objects directly below dir, in name order.
func (s *Store) List(ctx context.Context, dir string) ([]storage.Info, error) {
	prefix := s.prefix
	if dir != "" {
		prefix += strings.TrimSuffix(dir, "/") + "/"
	}
	var out []storage.Info
	for obj := range s.core.Client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if obj.Err != nil {
			if minio.ToErrorResponse(obj.Err).Code == minio.NoSuchKey {
				break
			}
			return nil, fmt.Errorf("listing %s: %w", prefix, obj.Err)
		}
		if strings.HasSuffix(obj.Key, "/") {
			continue // a "directory"
		}
		out = append(out, infoOf(strings.TrimPrefix(obj.Key, s.prefix), obj))
	}
	return out, nil
}

// Close releases nothing: the client holds only idle connections.
func (s *Store) Close() error { return nil }

// Temporaries lists the unfinished multipart uploads below the prefix: live
// ones, and those old enough to be a killed writer's.
func (s *Store) Temporaries(ctx context.Context) (live, abandoned []string, err error) {
	err = s.eachUpload(ctx, func(up minio.ObjectMultipartInfo) error {
		name := strings.TrimPrefix(up.Key, s.prefix)
		if time.Since(up.Initiated) < s.abandonedAfter {
			live = append(live, name)
		} else {
			abandoned = append(abandoned, name)
		}
		return nil
	})
	return live, abandoned, err
}

// eachUpload calls f with every unfinished multipart upload below the
// prefix.
func (s *Store) eachUpload(ctx context.Context, f func(minio.ObjectMultipartInfo) error) error {
	keyMarker, uploadMarker := "", ""
	for {
		result, err := s.core.ListMultipartUploads(ctx, s.bucket, s.prefix, keyMarker, uploadMarker, "", 1000)
		if err != nil {
			return fmt.Errorf("listing unfinished uploads: %w", err)
		}
		for _, up := range result.Uploads {
			if err := f(up); err != nil {
				return err
			}
		}
		if !result.IsTruncated {
			return nil
		}
		keyMarker, uploadMarker = result.NextKeyMarker, result.NextUploadIDMarker
	}
}

// RemoveAbandoned aborts the multipart uploads below the prefix that were
// started long enough ago that no writer is still at them: those of a
// process that was killed.
func (s *Store) RemoveAbandoned(ctx context.Context) ([]string, error) {
	var removed []string
	err := s.eachUpload(ctx, func(up minio.ObjectMultipartInfo) error {
		if time.Since(up.Initiated) < s.abandonedAfter {
			return nil
		}
		if err := s.core.AbortMultipartUpload(ctx, s.bucket, up.Key, up.UploadID); err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchUpload {
			return fmt.Errorf("aborting the unfinished upload of %s: %w", up.Key, err)
		}
		removed = append(removed, strings.TrimPrefix(up.Key, s.prefix))
		return nil
	})
	return removed, err
}

// PresignGet returns a URL that fetches the object name for ttl, signed
// with the store's credentials, for clients to download from the server
// directly.
func (s *Store) PresignGet(ctx context.Context, name string, ttl time.Duration) (string, error) {
	u, err := s.core.PresignedGetObject(ctx, s.bucket, s.key(name), ttl, nil)
	if err != nil {
		return "", fmt.Errorf("signing a URL for %s: %w", name, err)
	}
	return u.String(), nil
}

// lease is the content of a lease object.
type lease struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// readLease reads the lease name and its ETag; a missing lease is the zero
// lease and no ETag.
func (s *Store) readLease(ctx context.Context, name string) (lease, string, error) {
	body, info, _, err := s.core.GetObject(ctx, s.bucket, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		if errors.Is(notFound(name, err), fs.ErrNotExist) {
			return lease{}, "", nil
		}
		return lease{}, "", fmt.Errorf("reading the lease %s: %w", name, err)
	}
	defer func() { _ = body.Close() }()
	var current lease
	if err := json.NewDecoder(io.LimitReader(body, 64<<10)).Decode(&current); err != nil {
		// Unreadable: treat it as expired, so that it can be taken over.
		return lease{}, info.ETag, nil
	}
	return current, info.ETag, nil
}

// TryLease takes or extends the lease name with a conditional write: on a
// missing object If-None-Match: *, else If-Match on the ETag read, so that
// of two nodes racing for it one wins.
func (s *Store) TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, string, error) {
	current, etag, err := s.readLease(ctx, name)
	if err != nil {
		return false, "", err
	}
	now := time.Now()
	if etag != "" && current.Holder != holder && now.Before(current.Expires) {
		return false, fmt.Sprintf("%s until %s", current.Holder, current.Expires.UTC().Format(time.RFC3339)), nil
	}
	data, err := json.Marshal(lease{Holder: holder, Expires: now.Add(ttl)})
	if err != nil {
		return false, "", err
	}
	opts := minio.PutObjectOptions{ContentType: "application/json", DisableContentSha256: true}
	if etag == "" {
		opts.SetMatchETagExcept("*")
	} else {
		opts.SetMatchETag(etag)
	}
	if _, err := s.core.PutObject(ctx, s.bucket, s.key(name), bytes.NewReader(data), int64(len(data)), "", sha256Hex(data), opts); err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
			return false, "another node, which took it just now", nil
		}
		return false, "", fmt.Errorf("writing the lease %s: %w", name, err)
	}
	return true, "", nil
}

// ReleaseLease deletes the lease name if holder has it.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	current, etag, err := s.readLease(ctx, name)
	if err != nil || etag == "" || current.Holder != holder {
		return err
	}
	return s.core.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{})
}

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

// object reads an object with ranged GETs, each conditional on the ETag
// the object had when it was opened, so that a reader never mixes two
// versions.
type object struct {
	ctx   context.Context
	store *Store
	key   string
	size  int64
	etag  string

	off     int64
	body    io.ReadCloser
	bodyOff int64
}

func (o *object) get(start, end int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if o.etag != "" {
		if err := opts.SetMatchETag(o.etag); err != nil {
			return nil, err
		}
	}
	if start > 0 || end >= 0 {
		if end < 0 {
			end = 0 // to the end
		}
		if err := opts.SetRange(start, end); err != nil {
			return nil, err
		}
	}
	body, _, _, err := o.store.core.GetObject(o.ctx, o.store.bucket, o.key, opts)
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
			return nil, fmt.Errorf("%s changed while it was read: %w", o.key, err)
		}
		return nil, notFound(o.key, err)
	}
	return body, nil
}

func (o *object) Read(p []byte) (int, error) {
	if o.off >= o.size {
		return 0, io.EOF
	}
	if o.body == nil || o.bodyOff != o.off {
		if o.body != nil {
			_ = o.body.Close()
		}
		body, err := o.get(o.off, -1)
		if err != nil {
			o.body = nil
			return 0, err
		}
		o.body, o.bodyOff = body, o.off
	}
	n, err := o.body.Read(p)
	o.off += int64(n)
	o.bodyOff += int64(n)
	if errors.Is(err, io.EOF) && o.off < o.size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (o *object) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += o.off
	case io.SeekEnd:
		offset += o.size
	default:
		return 0, errors.New("invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("negative position")
	}
	o.off = offset
	return offset, nil
}

func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), o.size) - 1
	body, err := o.get(off, end)
	if err != nil {
		return 0, err
	}
	defer func() { _ = body.Close() }()
	n, err := io.ReadFull(body, p[:end-off+1])
	if err == nil && int64(n) < int64(len(p)) {
		err = io.EOF
	}
	return n, err
}

func (o *object) Close() error {
	if o.body != nil {
		return o.body.Close()
	}
	return nil
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

// Interface guards
var (
	_ storage.Store           = (*Store)(nil)
	_ storage.Sweeper         = (*Store)(nil)
	_ storage.TemporaryLister = (*Store)(nil)
	_ storage.Leaser          = (*Store)(nil)
	_ storage.Presigner       = (*Store)(nil)
	_ storage.Upload          = (*upload)(nil)
	_ storage.Object          = (*object)(nil)
)
