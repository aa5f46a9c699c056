package sources

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"go.uber.org/zap"
)

// NarInfo answers the narinfo of the path whose hash part is hash from the
// live store, then from each upstream: its text, signed where the source
// is to be signed by the cache, and when it last changed. ErrNotFound
// means no source has it.
func (s *Sources) NarInfo(ctx context.Context, hash string) (body []byte, modTime time.Time, err error) {
	if s.live != nil {
		body, modTime, err := s.liveNarInfo(ctx, hash)
		if !errors.Is(err, ErrNotFound) {
			return body, modTime, err
		}
	}
	for _, u := range s.upstreams {
		info, err := u.narInfo(ctx, s.storeDir, hash)
		if errors.Is(err, errUpstreamMiss) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, time.Time{}, err
			}
			s.logger.Warn("passing over an upstream", zap.String("upstream", u.base), zap.String("hash", hash), zap.Error(err))
			continue
		}
		s.upstreamNars.put(info.URL, upstreamNarinfo{from: u, info: info})
		served := *info
		if u.sign {
			if err := nixfmt.Sign(&served, s.keys); err != nil {
				return nil, time.Time{}, err
			}
		}
		return []byte(served.String()), time.Now(), nil
	}
	return nil, time.Time{}, ErrNotFound
}

// ServeFile answers a NAR, listing or log the cache does not hold, from
// the live store, then from the upstreams. ErrNotFound means no source
// has it; an answer cut after its header is an httpx.Aborted.
func (s *Sources) ServeFile(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	if s.live != nil {
		if err := s.serveLive(w, r, req); !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	if req.Kind == cacheurl.Realisation || len(s.upstreams) == 0 {
		return ErrNotFound
	}
	rel := req.File
	if r.URL.RawQuery != "" {
		rel += "?" + r.URL.RawQuery
	}
	candidates := s.upstreams
	known, isKnown := s.upstreamNars.get(rel)
	if isKnown {
		candidates = []*upstream{known.from}
	}
	for _, u := range candidates {
		resp, err := u.get(r.Context(), rel, r.Header)
		if errors.Is(err, errUpstreamMiss) {
			continue
		}
		if err != nil {
			if r.Context().Err() != nil {
				return err
			}
			s.logger.Warn("passing over an upstream", zap.String("upstream", u.base), zap.String("file", rel), zap.Error(err))
			continue
		}
		defer func() { _ = resp.Body.Close() }()
		if !isKnown {
			known = upstreamNarinfo{from: u}
		}
		return s.sendUpstream(w, r, req, known, resp)
	}
	return ErrNotFound
}

// sendUpstream passes an upstream's answer on. A whole NAR is checked on
// the way against the narinfo it was served with (or, without one, against
// the file hash its name is), and its end held back until it is: one that
// does not match is cut short, and logged.
func (s *Sources) sendUpstream(w http.ResponseWriter, r *http.Request, req cacheurl.Request, from upstreamNarinfo, resp *http.Response) error {
	header := w.Header()
	for _, name := range []string{"Content-Type", "Content-Range", "Last-Modified", "ETag"} {
		if value := resp.Header.Get(name); value != "" {
			header.Set(name, value)
		}
	}
	if header.Get("Content-Type") == "" {
		header.Set("Content-Type", cacheurl.ContentType(req.Kind))
	}
	if resp.ContentLength >= 0 {
		header.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	whole := req.Kind == cacheurl.Nar && resp.StatusCode == http.StatusOK
	if whole {
		header.Set("Cache-Control", cacheurl.Immutable)
	}
	if r.Method == http.MethodHead || !whole {
		w.WriteHeader(resp.StatusCode)
		if r.Method == http.MethodHead {
			return nil
		}
		if _, err := io.Copy(w, resp.Body); err != nil {
			return httpx.Aborted{Err: err}
		}
		return nil
	}
	keepLater := false
	if info := from.info; info != nil && from.from.keep && info.URL == requestedFile(r, req) {
		switch kept, err := s.keptForm(info); {
		case err != nil:
			from.from.warnUnkeepable(s.logger, info, err)
		case kept.Compression == info.Compression:
			return s.pullThrough(w, r, req, from, kept, resp)
		default:
			// Kept decompressed: fetched again once the client has it.
			keepLater = true
		}
	}
	var fileHash []byte
	fileSize := int64(-1)
	if info := from.info; info != nil {
		if info.FileHash != nil {
			fileHash = info.FileHash.Digest()
		}
		if info.FileSize != 0 {
			fileSize = int64(info.FileSize)
		}
	} else if r.URL.RawQuery == "" {
		// NARs are named by their file hash in every cache Nix writes.
		fileHash, _ = nixbase32.DecodeString(path.Base(req.File)[:52])
	}
	w.WriteHeader(http.StatusOK)
	err := copyChecked(w, resp.Body, fileHash, fileSize)
	if err != nil {
		s.logger.Error("an upstream NAR was not passed on whole", zap.String("upstream", from.from.base), zap.String("file", req.File), zap.Error(err))
		return httpx.Aborted{Err: err}
	}
	if keepLater {
		s.keepInBackground(from)
	}
	return nil
}

// copyChecked copies body to w and checks its sha256 and size where they
// are given (nil, -1 when not), holding back the end until they match.
func copyChecked(w io.Writer, body io.Reader, fileHash []byte, fileSize int64) error {
	tail := &iox.TailWriter{W: w, Hold: heldBack}
	hasher := sha256.New()
	n, err := io.Copy(io.MultiWriter(hasher, tail), body)
	switch {
	case err != nil:
		return fmt.Errorf("receiving from the upstream: %w", err)
	case fileSize >= 0 && n != fileSize:
		return fmt.Errorf("the upstream sent %d bytes where the narinfo says FileSize %d", n, fileSize)
	case fileHash != nil && !bytes.Equal(hasher.Sum(nil), fileHash):
		return fmt.Errorf("the upstream sent a file whose sha256 is %s where sha256:%s was expected", nixbase32.EncodeToString(hasher.Sum(nil)), nixbase32.EncodeToString(fileHash))
	}
	return tail.Release()
}

// requestedFile is the file a request names, with its query, as a
// narinfo's URL names it.
func requestedFile(r *http.Request, req cacheurl.Request) string {
	if r.URL.RawQuery != "" {
		return req.File + "?" + r.URL.RawQuery
	}
	return req.File
}
