package caddynix

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/s3"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// StorageConfig keeps the cache somewhere other than a directory.
type StorageConfig struct {
	// S3 keeps the cache in a bucket of an S3-compatible server, in the
	// layout `nix copy --to s3://` writes, so that several Caddy nodes can
	// serve one cache. Caddyfile: `storage s3 { … }`.
	S3 *S3Config `json:"s3,omitempty"`
}

// S3Config is a bucket of an S3-compatible server. Placeholders such as
// {env.S3_ACCESS_KEY_ID} are expanded in every field; the secret is never
// logged.
type S3Config struct {
	// Bucket is the bucket's name; it must exist. Caddyfile: `bucket`.
	Bucket string `json:"bucket,omitempty"`
	// Prefix puts the cache below a "directory" of the bucket, e.g. main/.
	// Caddyfile: `prefix`.
	Prefix string `json:"prefix,omitempty"`
	// Endpoint is the server's URL, e.g. https://s3.example.org. Caddyfile:
	// `endpoint`.
	Endpoint string `json:"endpoint,omitempty"`
	// Region is the bucket's region. Default: us-east-1. Caddyfile: `region`.
	Region string `json:"region,omitempty"`
	// PathStyle addresses the bucket as ENDPOINT/BUCKET, for servers
	// without virtual-host buckets. Caddyfile: `path_style`.
	PathStyle bool `json:"path_style,omitempty"`
	// AccessKeyID signs the requests with SecretAccessKey. Caddyfile:
	// `access_key_id`.
	AccessKeyID string `json:"access_key_id,omitempty"`
	// SecretAccessKey is the secret, usually a placeholder such as
	// {env.S3_SECRET_ACCESS_KEY}. Caddyfile: `secret_access_key`.
	SecretAccessKey string `json:"secret_access_key,omitempty"`
	// SecretAccessKeyFile reads the secret from a file that only its owner
	// may read (mode 0600), instead. Caddyfile: `secret_access_key_file`.
	SecretAccessKeyFile string `json:"secret_access_key_file,omitempty"`
	// PartSize is the size of the parts uploads are sent in, which is
	// what each upload in progress holds in memory. Default: 16MiB; at
	// least 5MiB. Caddyfile: `part_size`.
	PartSize int64 `json:"part_size,omitempty"`
	// AbandonUploadsAfter is how old an unfinished upload must be before
	// a node that starts takes it for the leftover of a killed node and
	// removes its parts: longer than any upload takes. Default: 6h.
	// Caddyfile: `abandon_uploads_after`.
	AbandonUploadsAfter caddy.Duration `json:"abandon_uploads_after,omitempty"`
	// Redirect answers NAR requests with a redirect to a URL of the S3
	// server signed for this long, so that clients download NARs from it
	// directly; the endpoint must then be one clients reach. narinfo is
	// still served, and signed, by the node. Default: 0, NARs pass
	// through the node. Caddyfile: `redirect <duration>`.
	Redirect caddy.Duration `json:"redirect,omitempty"`
	// GCGrace is how long a collection announces what it is about to
	// delete before it deletes it. Meanwhile every node refuses (409)
	// uploads that need an announced path, and an upload that did not see
	// the announcement lands before the grace ends, so that the collection
	// keeps what it needs. Set the same on every node sharing the bucket.
	// Default: 1m. Caddyfile: `gc_grace 1m`.
	GCGrace caddy.Duration `json:"gc_grace,omitempty"`
}

// gcGrace is the grace of collections on the storage, which matters only
// when it is shared.
func (c *StorageConfig) gcGrace() time.Duration {
	if c == nil || c.S3 == nil || c.S3.GCGrace == 0 {
		return retention.DefaultGrace
	}
	return time.Duration(c.S3.GCGrace)
}

// s3Config expands the placeholders and reads the secret.
func (c *S3Config) s3Config(repl *caddy.Replacer) (s3.Config, error) {
	cfg := s3.Config{
		Bucket:         repl.ReplaceAll(c.Bucket, ""),
		Prefix:         repl.ReplaceAll(c.Prefix, ""),
		Endpoint:       repl.ReplaceAll(c.Endpoint, ""),
		Region:         repl.ReplaceAll(c.Region, ""),
		PathStyle:      c.PathStyle,
		AccessKeyID:    repl.ReplaceAll(c.AccessKeyID, ""),
		PartSize:       c.PartSize,
		AbandonedAfter: time.Duration(c.AbandonUploadsAfter),
	}
	switch {
	case time.Duration(c.GCGrace) > retention.LeaseTTL/2:
		return cfg, fmt.Errorf("gc_grace %s is longer than %s: a collection would lose its lease while it waits", time.Duration(c.GCGrace), retention.LeaseTTL/2)
	case c.SecretAccessKey != "" && c.SecretAccessKeyFile != "":
		return cfg, errors.New("give the S3 secret either as secret_access_key or as secret_access_key_file, not both")
	case c.SecretAccessKeyFile != "":
		secret, err := nixfmt.ReadPrivateFile(repl.ReplaceAll(c.SecretAccessKeyFile, ""), "S3 secret access key file")
		if err != nil {
			return cfg, err
		}
		cfg.SecretAccessKey = secret
	default:
		cfg.SecretAccessKey = strings.TrimSpace(repl.ReplaceAll(c.SecretAccessKey, ""))
	}
	return cfg, nil
}

// openStore opens where the cache is kept: the bucket of storage, or else
// the directory root, created when missing. It returns the store and a
// location that names it in logs and in the index's file name.
func openStore(ctx context.Context, repl *caddy.Replacer, root string, storageConfig *StorageConfig, otherSources bool) (storage.Store, string, error) {
	if storageConfig != nil && storageConfig.S3 != nil {
		if root != "" {
			return nil, "", errors.New("root and storage s3 both say where the cache is: keep one")
		}
		cfg, err := storageConfig.S3.s3Config(repl)
		if err != nil {
			return nil, "", err
		}
		store, err := s3.Open(ctx, cfg)
		if err != nil {
			return nil, "", fmt.Errorf("storage s3: %w", err)
		}
		return store, store.Location(), nil
	}
	if root == "" && otherSources {
		return storage.Empty, "", nil
	}
	if root == "" {
		return nil, "", errors.New("root is required: set it to the cache directory, e.g. `root cache/store`, or keep the cache in a bucket with `storage s3 { … }`")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, "", fmt.Errorf("resolving root %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, "", fmt.Errorf("creating cache root %s: %w", abs, err)
	}
	store, err := dir.Open(abs)
	if err != nil {
		return nil, "", fmt.Errorf("cache root %s: %w", abs, err)
	}
	return store, abs, nil
}

// parseS3URL reads a bucket in the spelling of Nix's S3 store URLs,
// s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION&addressing-style=path,
// with the credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as
// Nix reads them.
func parseS3URL(raw string) (*StorageConfig, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "s3" || u.Host == "" {
		return nil, fmt.Errorf("%q is not a bucket URL such as s3://nix-cache/main/?endpoint=https://s3.example.org", raw)
	}
	query := u.Query()
	c := &S3Config{
		Bucket:          u.Host,
		Prefix:          strings.TrimPrefix(u.Path, "/"),
		Endpoint:        query.Get("endpoint"),
		Region:          query.Get("region"),
		PathStyle:       query.Get("addressing-style") == "path",
		AccessKeyID:     os.Getenv("AWS_ACCESS_KEY_ID"),
		SecretAccessKey: os.Getenv("AWS_SECRET_ACCESS_KEY"),
	}
	if grace := query.Get("gc-grace"); grace != "" {
		d, err := caddy.ParseDuration(grace)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("gc-grace=%s in %s is not a positive duration such as 1m", grace, raw)
		}
		c.GCGrace = caddy.Duration(d)
	}
	if c.Endpoint == "" {
		return nil, fmt.Errorf("%s names no endpoint: add ?endpoint=https://s3.example.org", raw)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return nil, errors.New("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to the bucket's credentials")
	}
	return &StorageConfig{S3: c}, nil
}

// openCommandStore opens the cache a command names with --root (an
// existing directory) or --s3 (a bucket URL), and returns its storage
// settings too.
func openCommandStore(ctx context.Context, root, s3URL string) (storage.Store, string, *StorageConfig, error) {
	switch {
	case root != "" && s3URL != "":
		return nil, "", nil, errors.New("give either --root or --s3, not both")
	case s3URL != "":
		cfg, err := parseS3URL(s3URL)
		if err != nil {
			return nil, "", nil, err
		}
		store, location, err := openStore(ctx, caddy.NewReplacer(), "", cfg, false)
		return store, location, cfg, err
	case root == "":
		return nil, "", nil, errors.New("--root (a cache directory) or --s3 (a bucket URL) is required")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, "", nil, err
	}
	store, err := dir.Open(abs)
	if err != nil {
		return nil, "", nil, err
	}
	return store, abs, nil, nil
}
