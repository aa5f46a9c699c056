package caddyrunner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// storePusher uploads paths of a job's Nix store to the Nix cache with
// the job's credential, as `nix copy --to` would: it asks the cache for
// each path first, uploads a path's references before the path, and
// sends each NAR zstd-compressed before its narinfo. The cache checks
// every upload in full and signs it, exactly as it does nix copy's.
type storePusher struct {
	client *http.Client
	// uploadURL is the cache's upload URL, without a trailing slash.
	uploadURL string
	token     string
	db        *nixstore.DB
	// root is the job container's root; the store is at nix/store in it.
	root *os.Root
	// tempDir holds NARs too large to compress in memory.
	tempDir string
	// present are the hash parts of the paths the cache is known to hold.
	present map[string]bool
}

// inMemoryNar is the NAR size up to which a NAR is compressed in memory
// before it is sent; larger ones go through a file in tempDir.
const inMemoryNar = 8 << 20

// pushAttempts is how often a request that met a server error or a cut
// connection is sent, with pushRetryDelay doubling between the tries.
const (
	pushAttempts   = 3
	pushRetryDelay = 250 * time.Millisecond
)

// push makes sure the cache holds storePath and its closure. It reports
// whether the path was in the cache already.
func (p *storePusher) push(ctx context.Context, storePath string) (had bool, err error) {
	hash := hashPart(storePath)
	if p.present[hash] {
		return true, nil
	}
	// What the cache holds, it holds with its closure: it accepts a
	// narinfo only once its references are stored.
	found, err := p.lookup(ctx, hash)
	if err != nil {
		return false, err
	}
	if found {
		p.present[hash] = true
		return true, nil
	}
	info, err := p.db.PathInfo(ctx, hash)
	if err != nil {
		return false, fmt.Errorf("reading %s from the job's Nix database: %w", storePath, err)
	}
	for _, ref := range info.References {
		if hashPart(ref) == hash {
			continue
		}
		if _, err := p.push(ctx, "/nix/store/"+ref); err != nil {
			return false, err
		}
	}
	if err := p.upload(ctx, info); err != nil {
		return false, fmt.Errorf("uploading %s: %w", storePath, err)
	}
	p.present[hash] = true
	return false, nil
}

// lookup asks the cache whether it serves the path with hash part hash,
// from itself or an upstream.
func (p *storePusher) lookup(ctx context.Context, hash string) (bool, error) {
	resp, err := p.do(ctx, http.MethodGet, p.uploadURL+"/"+hash+".narinfo", nil, 0, "")
	if err != nil {
		return false, fmt.Errorf("asking the cache for %s: %w", hash, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("asking the cache for %s: %s", hash, resp.Status)
}

// upload sends a path's NAR, then its narinfo.
func (p *storePusher) upload(ctx context.Context, info *nixstore.PathInfo) error {
	nar, fileHash, fileSize, cleanup, err := p.compressedNar(info)
	if err != nil {
		return err
	}
	defer cleanup()
	url := "nar/" + nixbase32.EncodeToString(fileHash) + ".nar.zst"
	if err := p.put(ctx, url, nar, fileSize, "application/x-nix-nar"); err != nil {
		return err
	}
	ni := &narinfo.NarInfo{
		StorePath:   info.StorePath,
		URL:         url,
		Compression: "zstd",
		FileHash:    nixhash.MustNewHashWithEncoding(nixhash.SHA256, fileHash, nixhash.NixBase32, true),
		FileSize:    uint64(fileSize),
		NarHash:     info.NarHash,
		NarSize:     info.NarSize,
		References:  info.References,
		Deriver:     info.Deriver,
		CA:          info.CA,
	}
	text := ni.String()
	return p.put(ctx, hashPart(info.StorePath)+".narinfo", strings.NewReader(text), int64(len(text)), "text/x-nix-narinfo")
}

// compressedNar makes the path's NAR, checked against its registration,
// and compresses it. It returns the compressed file with its sha256 and
// size.
func (p *storePusher) compressedNar(info *nixstore.PathInfo) (io.ReadSeeker, []byte, int64, func(), error) {
	var (
		out      io.Writer
		inMemory bytes.Buffer
		file     *os.File
		cleanup  = func() {}
	)
	if info.NarSize <= inMemoryNar {
		out = &inMemory
	} else {
		f, err := os.CreateTemp(p.tempDir, "nar-*.zst")
		if err != nil {
			return nil, nil, 0, nil, fmt.Errorf("making room for a NAR: %w", err)
		}
		out, file, cleanup = f, f, func() { _ = f.Close(); _ = os.Remove(f.Name()) }
	}
	fileHasher := sha256.New()
	counted := &iox.CountingWriter{W: io.MultiWriter(out, fileHasher)}
	enc, err := zstd.NewWriter(counted, zstd.WithEncoderConcurrency(1))
	if err == nil {
		err = nixstore.WriteCheckedNarIn(enc, p.root, path.Join("nix/store", path.Base(info.StorePath)), info)
		err = errors.Join(err, enc.Close())
	}
	if err != nil {
		cleanup()
		return nil, nil, 0, nil, fmt.Errorf("reading %s from the job's store: %w", info.StorePath, err)
	}
	var compressed io.ReadSeeker = bytes.NewReader(inMemory.Bytes())
	if file != nil {
		compressed = file
	}
	return compressed, fileHasher.Sum(nil), counted.N, cleanup, nil
}

// put uploads body, of size bytes, to the cache's upload URL plus name.
func (p *storePusher) put(ctx context.Context, name string, body io.ReadSeeker, size int64, contentType string) error {
	resp, err := p.do(ctx, http.MethodPut, p.uploadURL+"/"+name, body, size, contentType)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode/100 == 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	reason, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	return fmt.Errorf("the cache answered %s: %s", resp.Status, strings.TrimSpace(string(reason)))
}

// do sends a request with the job's credential, again after a server
// error or a cut connection, with body read from its start each time.
func (p *storePusher) do(ctx context.Context, method, url string, body io.ReadSeeker, size int64, contentType string) (*http.Response, error) {
	delay := pushRetryDelay
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, url, nil)
		if err != nil {
			return nil, err
		}
		if body != nil {
			if _, err := body.Seek(0, io.SeekStart); err != nil {
				return nil, err
			}
			req.Body, req.ContentLength = io.NopCloser(body), size
			req.Header.Set("Content-Type", contentType)
		}
		req.SetBasicAuth("job", p.token)
		resp, err := p.client.Do(req)
		retry := err != nil || resp.StatusCode == http.StatusInternalServerError ||
			resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable ||
			resp.StatusCode == http.StatusGatewayTimeout
		if !retry || attempt == pushAttempts || ctx.Err() != nil {
			return resp, err
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// hashPart is the hash part of a store path or of its base name.
func hashPart(storePath string) string {
	base := path.Base(storePath)
	if i := strings.IndexByte(base, '-'); i > 0 {
		return base[:i]
	}
	return base
}
