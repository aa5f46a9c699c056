package sources

import (
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// serveLiveNar streams the NAR of a live path, made from its files as it
// is sent and checked against the database's NarHash on the way (once
// per path; after that by size, with the kernel sending the files): a
// path that changed or was collected meanwhile cuts the response short.
func (s *Sources) serveLiveNar(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	narHash, hash, ext, ok := liveNarRequest(r, req)
	if !ok {
		return ErrNotFound
	}
	info, err := s.livePathInfo(r.Context(), hash)
	if err != nil {
		return err
	}
	if info.NarHash.Format(nixhash.NixBase32, false) != narHash {
		// Collected and built again, differently, since the client read
		// its narinfo.
		return ErrNotFound
	}
	fsPath := s.live.fsPath(info.StorePath)
	header := w.Header()
	header.Set("Cache-Control", cacheurl.Immutable)
	header.Set("ETag", `"`+narHash+ext+`"`)
	if ext == ".nar.zst" {
		return s.sendLiveZstd(w, r, fsPath, info)
	}
	header.Set("Content-Type", cacheurl.ContentType(cacheurl.Nar))
	if !httpx.PlainGet(r) {
		return s.serveLiveNarRanges(w, r, fsPath, info)
	}
	header.Set("Accept-Ranges", "bytes")
	header.Set("Content-Length", strconv.FormatUint(info.NarSize, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	body, done := httpx.RecordSized(w, r)
	defer done()
	if err := s.live.writeNar(body, fsPath, info); err != nil {
		return s.liveFailure(info, err)
	}
	return nil
}

// writeNar writes a live path's NAR, checking it against its hash the
// first time and by its size once the files were found to match.
func (l *liveStore) writeNar(w io.Writer, fsPath string, info *nixstore.PathInfo) error {
	key := info.StorePath + " " + info.NarHash.String()
	if _, ok := l.verified.get(key); ok {
		return nixstore.WriteKnownNar(w, fsPath, info)
	}
	if err := nixstore.WriteCheckedNar(w, fsPath, info); err != nil {
		return err
	}
	l.verified.put(key, true)
	return nil
}

// liveFailure logs a live path that could not be sent whole and cuts the
// response.
func (s *Sources) liveFailure(info *nixstore.PathInfo, err error) error {
	if !errors.Is(err, nixstore.ErrChanged) && !errors.Is(err, os.ErrNotExist) {
		// Most likely the client went away.
		s.logger.Debug("live store path not sent whole", zap.String("path", info.StorePath), zap.Error(err))
		return httpx.Aborted{Err: err}
	}
	s.logger.Error("live store path changed or was collected while it was sent; the response was cut short", zap.String("path", info.StorePath), zap.Error(err))
	return httpx.Aborted{Err: err}
}

// serveLiveNarRanges answers a Range or conditional request for an
// uncompressed NAR with http.ServeContent, each range made from the files
// again. The bytes before a range are made and dropped; a range that ends
// before the NAR does is not checked against NarHash, which the client
// checks once it has every range.
func (s *Sources) serveLiveNarRanges(w http.ResponseWriter, r *http.Request, fsPath string, info *nixstore.PathInfo) error {
	size := int64(info.NarSize)
	if !httpx.DropEmptySuffixRanges(w, r, size) {
		return nil
	}
	nar := &narSeeker{fsPath: fsPath, info: info, size: size}
	defer nar.Close()
	http.ServeContent(w, r, "", info.Registered, nar)
	if err := nar.failure(); err != nil {
		return s.liveFailure(info, err)
	}
	return nil
}

// narSeeker reads a live NAR from any offset, for http.ServeContent: a
// read after a seek makes the NAR again in a goroutine and skips to the
// offset.
type narSeeker struct {
	fsPath string
	info   *nixstore.PathInfo
	size   int64
	offset int64

	reader *io.PipeReader
	done   chan struct{}
	mu     sync.Mutex
	err    error
}

func (s *narSeeker) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.offset
	case io.SeekEnd:
		offset += s.size
	}
	if offset < 0 || offset > s.size {
		return 0, fmt.Errorf("seek to %d outside a NAR of %d bytes", offset, s.size)
	}
	if offset != s.offset {
		s.stop()
		s.offset = offset
	}
	return offset, nil
}

func (s *narSeeker) Read(p []byte) (int, error) {
	if s.reader == nil {
		reader, writer := io.Pipe()
		s.reader, s.done = reader, make(chan struct{})
		go func(skip int64) {
			defer close(s.done)
			err := nixstore.WriteCheckedNar(&skipWriter{w: writer, skip: skip}, s.fsPath, s.info)
			if err != nil && !errors.Is(err, io.ErrClosedPipe) {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
			}
			writer.CloseWithError(err)
		}(s.offset)
	}
	n, err := s.reader.Read(p)
	s.offset += int64(n)
	return n, err
}

// stop ends the goroutine making the NAR, if one runs.
func (s *narSeeker) stop() {
	if s.reader == nil {
		return
	}
	_ = s.reader.Close()
	<-s.done
	s.reader = nil
}

func (s *narSeeker) Close() { s.stop() }

// failure is why making the NAR failed, other than being stopped.
func (s *narSeeker) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// skipWriter drops the first skip bytes written to it.
type skipWriter struct {
	w    io.Writer
	skip int64
}

func (s *skipWriter) Write(p []byte) (int, error) {
	if s.skip >= int64(len(p)) {
		s.skip -= int64(len(p))
		return len(p), nil
	}
	n, err := s.w.Write(p[s.skip:])
	n += int(s.skip)
	s.skip = 0
	return n, err
}

// zstdEncoders bounds the zstd encoders compressing live NARs at once:
// compression is CPU-bound, so more than a few per core only adds memory.
// Encoders are kept for the next NAR.
type zstdEncoders struct {
	slots *semaphore.Weighted
	pool  sync.Pool
}

// liveZstd is made when first used: Caddy sets GOMAXPROCS from the CPU
// quota after packages are initialised.
var liveZstd = sync.OnceValue(func() *zstdEncoders {
	return &zstdEncoders{slots: semaphore.NewWeighted(int64(2 * runtime.GOMAXPROCS(0)))}
})

// zstdWindow is the encoders' window. Larger windows find repeats further
// apart in big NARs, at the cost of memory per encoder.
const zstdWindow = 8 << 20

func (z *zstdEncoders) get(ctx context.Context) (*zstd.Encoder, error) {
	if err := z.slots.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	if enc, ok := z.pool.Get().(*zstd.Encoder); ok {
		return enc, nil
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(zstdWindow))
	if err != nil {
		z.slots.Release(1)
		return nil, err
	}
	return enc, nil
}

func (z *zstdEncoders) put(enc *zstd.Encoder) {
	enc.Reset(nil)
	z.pool.Put(enc)
	z.slots.Release(1)
}

// sendLiveZstd streams a live NAR compressed with zstd as it is made. Its
// compressed size is not known ahead, so the whole NAR is always sent;
// the NAR's size is pledged in the zstd frame.
func (s *Sources) sendLiveZstd(w http.ResponseWriter, r *http.Request, fsPath string, info *nixstore.PathInfo) error {
	w.Header().Set("Content-Type", cacheurl.NarContentType(".zst"))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	encoders := liveZstd()
	enc, err := encoders.get(r.Context())
	if err != nil {
		return err // the client went away while waiting
	}
	defer encoders.put(enc)
	w.WriteHeader(http.StatusOK)
	body, done := httpx.RecordSized(w, r)
	defer done()
	enc.ResetContentSize(body, int64(info.NarSize))
	err = s.live.writeNar(enc, fsPath, info)
	if err == nil {
		err = enc.Close()
	}
	if err != nil {
		return s.liveFailure(info, err)
	}
	return nil
}

// serveLiveListing answers <hash>.ls for a live path, made from its files.
func (s *Sources) serveLiveListing(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	info, err := s.livePathInfo(r.Context(), req.Hash)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", cacheurl.ContentType(cacheurl.Listing))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	if err := nixstore.WriteListing(w, s.live.fsPath(info.StorePath)); err != nil {
		return s.liveFailure(info, err)
	}
	return nil
}

// serveLiveLog answers log/<drv> with the build log Nix kept, in
// <log_dir>/<first two letters>/<rest>, plain or compressed with bzip2
// (Nix's default), sent as plain text either way.
func (s *Sources) serveLiveLog(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	name := filepath.Base(req.File)
	base := filepath.Join(s.live.logDir, name[:2], name[2:])
	if f, err := os.Open(base); err == nil {
		defer func() { _ = f.Close() }()
		info, err := f.Stat()
		if err != nil || !info.Mode().IsRegular() {
			return ErrNotFound
		}
		w.Header().Set("Content-Type", cacheurl.ContentType(cacheurl.Log))
		http.ServeContent(w, r, "", info.ModTime(), f)
		return nil
	}
	f, err := os.Open(base + ".bz2")
	if err != nil {
		return ErrNotFound
	}
	defer func() { _ = f.Close() }()
	w.Header().Set("Content-Type", cacheurl.ContentType(cacheurl.Log))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	if _, err := io.Copy(w, bzip2.NewReader(f)); err != nil {
		s.logger.Error("reading a build log", zap.String("file", base+".bz2"), zap.Error(err))
		return httpx.Aborted{Err: err}
	}
	return nil
}

// livePathInfo looks up a valid path by its hash part. A path the store does
// not hold is a 404; a database that fails is a 503 with a log line, so
// that a client does not remember a miss.
func (s *Sources) livePathInfo(ctx context.Context, hash string) (*nixstore.PathInfo, error) {
	found, err := s.liveLookup(ctx, hash)
	if err != nil {
		return nil, err
	}
	return found.info, nil
}

// liveLookup looks a hash part up in the database, or in memory while the
// database has not changed since the last look: Nix collecting a path
// changes it, so a collected path is never answered from memory.
func (s *Sources) liveLookup(ctx context.Context, hash string) (liveLookup, error) {
	version, err := s.live.db.Version(ctx)
	if err != nil {
		return liveLookup{}, s.liveDBFailure(hash, err)
	}
	if found, ok := s.live.lookups.get(hash); ok && found.version == version {
		if found.info == nil {
			return liveLookup{}, ErrNotFound
		}
		return found, nil
	}
	// Read after the version: a commit in between changes the version
	// again, and the next request looks again.
	info, err := s.live.db.PathInfo(ctx, hash)
	switch {
	case errors.Is(err, nixstore.ErrNotValid):
		s.live.lookups.put(hash, liveLookup{version: version})
		return liveLookup{}, ErrNotFound
	case err != nil:
		return liveLookup{}, s.liveDBFailure(hash, err)
	}
	found := liveLookup{version: version, info: info}
	s.live.lookups.put(hash, found)
	return found, nil
}

func (s *Sources) liveDBFailure(hash string, err error) error {
	s.logger.Error("reading the live store's database", zap.String("hash", hash), zap.Error(err))
	return httpx.Error(http.StatusServiceUnavailable, fmt.Errorf("the live store's database failed: %w", err))
}

// liveNarInfo answers a narinfo from the live store, signed by every
// configured key beside the store's own signatures.
func (s *Sources) liveNarInfo(ctx context.Context, hash string) ([]byte, time.Time, error) {
	found, err := s.liveLookup(ctx, hash)
	if err != nil {
		return nil, time.Time{}, err
	}
	if found.narInfo != nil {
		return found.narInfo, found.info.Registered, nil
	}
	body, err := s.signedLiveNarInfo(found.info)
	if err != nil {
		s.logger.Error("serving a live store path as missing", zap.String("path", found.info.StorePath), zap.Error(err))
		return nil, time.Time{}, ErrNotFound
	}
	found.narInfo = body
	s.live.lookups.put(hash, found)
	return body, found.info.Registered, nil
}

// signedLiveNarInfo is the narinfo of a live path, signed by every key.
func (s *Sources) signedLiveNarInfo(info *nixstore.PathInfo) ([]byte, error) {
	ni, err := s.live.narInfo(info)
	if err != nil {
		return nil, err
	}
	unsigned := ni.String()
	if body, ok := s.live.signed.get(unsigned); ok {
		return body, nil
	}
	if err := nixfmt.Sign(ni, s.keys); err != nil {
		return nil, err
	}
	body := []byte(ni.String())
	s.live.signed.put(unsigned, body)
	return body, nil
}

// serveLive answers, from the live store, a request for a file the cache
// does not hold.
func (s *Sources) serveLive(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	switch req.Kind {
	case cacheurl.Nar:
		return s.serveLiveNar(w, r, req)
	case cacheurl.Listing:
		return s.serveLiveListing(w, r, req)
	case cacheurl.Log:
		return s.serveLiveLog(w, r, req)
	}
	return ErrNotFound
}
