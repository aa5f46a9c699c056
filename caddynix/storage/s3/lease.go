package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"time"

	"github.com/minio/minio-go/v7"
)

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

// LeaseHolder returns who holds the lease name and until when; nobody
// when it is missing or expired.
func (s *Store) LeaseHolder(ctx context.Context, name string) (string, time.Time, error) {
	current, _, err := s.readLease(ctx, name)
	if err != nil || !time.Now().Before(current.Expires) {
		return "", time.Time{}, err
	}
	return current.Holder, current.Expires, nil
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
