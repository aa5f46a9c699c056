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
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
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
	// connReads is whether objects can be read on connections of their
	// own, which the kernel can move into a client's (see ReadConn).
	connReads bool
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
		connReads:      connReadable(u),
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

// Delete removes the object name; a missing one is no error.
func (s *Store) Delete(ctx context.Context, name string) error {
	return s.core.RemoveObject(ctx, s.bucket, s.key(name), minio.RemoveObjectOptions{})
}

// List returns the objects directly below dir, in name order.
func (s *Store) List(ctx context.Context, dir string) ([]storage.Info, error) {
	var out []storage.Info
	err := s.Walk(ctx, dir, func(info storage.Info) error {
		out = append(out, info)
		return nil
	})
	return out, err
}

// Walk calls fn with the objects directly below dir, in name order, as
// the listing's pages come.
func (s *Store) Walk(ctx context.Context, dir string, fn func(storage.Info) error) error {
	prefix := s.prefix
	if dir != "" {
		prefix += strings.TrimSuffix(dir, "/") + "/"
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing fn stopped
	for obj := range s.core.Client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if obj.Err != nil {
			if minio.ToErrorResponse(obj.Err).Code == minio.NoSuchKey {
				return nil
			}
			return fmt.Errorf("listing %s: %w", prefix, obj.Err)
		}
		if strings.HasSuffix(obj.Key, "/") {
			continue // a "directory"
		}
		if err := fn(infoOf(strings.TrimPrefix(obj.Key, s.prefix), obj)); err != nil {
			return err
		}
	}
	return ctx.Err()
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

// Interface guards
var (
	_ storage.Store           = (*Store)(nil)
	_ storage.Sweeper         = (*Store)(nil)
	_ storage.TemporaryLister = (*Store)(nil)
	_ storage.Leaser          = (*Store)(nil)
	_ storage.LeaseReader     = (*Store)(nil)
	_ storage.Presigner       = (*Store)(nil)
)
