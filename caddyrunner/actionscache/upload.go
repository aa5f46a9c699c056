package actionscache

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// maxKeyLength is GitHub's limit on a cache key.
const maxKeyLength = 512

// validVersion is what @actions/cache sends as a version: a hex digest of
// the paths and the compression. Anything printable and short is taken.
var validVersion = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// reservation is an entry being uploaded.
type reservation struct {
	entry  entry
	grant  *grant
	upload storage.ChunkedUpload
	// declared is the size the client reserved, or -1.
	declared int64

	mu      sync.Mutex
	written []span
	busy    int
}

// span is a written byte range, end exclusive.
type span struct{ start, end int64 }

// maxSpans bounds what an upload's bookkeeping holds whatever the client
// sends: a client that writes scattered tiny chunks is refused.
const maxSpans = 4096

// record notes a written span, merging touching spans when there are many.
func (r *reservation) record(written span) error {
	r.written = append(r.written, written)
	if len(r.written) < maxSpans {
		return nil
	}
	r.written = merged(r.written)
	if len(r.written) >= maxSpans {
		return clientError(http.StatusBadRequest, "the upload is in more than %d separate pieces", maxSpans)
	}
	return nil
}

// merged sorts spans and joins those that touch or overlap.
func merged(spans []span) []span {
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	out := spans[:0]
	for _, s := range spans {
		if n := len(out); n > 0 && s.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// covers reports whether the written spans cover [0, size) and nothing
// beyond it.
func (r *reservation) covers(size int64) bool {
	spans := merged(slices.Clone(r.written))
	if size == 0 {
		return len(spans) == 0
	}
	return len(spans) == 1 && spans[0] == span{0, size}
}

type reserveRequest struct {
	Key       string `json:"key"`
	Version   string `json:"version"`
	CacheSize *int64 `json:"cacheSize"`
}

// reserve starts an entry: POST caches {"key","version","cacheSize"}.
func (h *Handler) reserve(w http.ResponseWriter, r *http.Request, g *grant) error {
	var req reserveRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := checkKey(req.Key); err != nil {
		return err
	}
	if err := checkVersion(req.Version); err != nil {
		return err
	}
	declared := int64(-1)
	if req.CacheSize != nil {
		declared = *req.CacheSize
		if declared < 0 {
			return clientError(http.StatusBadRequest, "cacheSize %d is negative", declared)
		}
		if declared > h.keep.maxSize {
			return clientError(http.StatusBadRequest, "cache write denied: an entry of %d bytes is larger than this cache's max_size of %d bytes per repository", declared, h.keep.maxSize)
		}
	}
	s := h.entries
	id, err := newID()
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.existsLocked(g.scope.Repository, g.scope.WriteRef, req.Key, req.Version) {
		s.mu.Unlock()
		return clientError(http.StatusConflict, "an entry with key %q and this version exists or is being saved on %s", req.Key, g.scope.WriteRef)
	}
	upload, err := s.store.Create(r.Context(), archiveName(id))
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("starting the entry's archive: %w", err)
	}
	chunked, ok := upload.(storage.ChunkedUpload)
	if !ok {
		upload.Abort()
		s.mu.Unlock()
		return errors.New("the cache's storage cannot take an archive in chunks")
	}
	s.pending[id] = &reservation{
		entry: entry{
			ID: id, Repository: g.scope.Repository, Ref: g.scope.WriteRef,
			Key: req.Key, Version: req.Version,
		},
		grant:    g,
		upload:   chunked,
		declared: declared,
	}
	s.mu.Unlock()
	return writeJSON(w, http.StatusOK, map[string]int64{"cacheId": id})
}

// checkKey applies GitHub's rules for a key, so that what works here works
// there: non-empty, at most 512 characters, no comma.
func checkKey(key string) error {
	switch {
	case key == "":
		return clientError(http.StatusBadRequest, "the key is empty")
	case len(key) > maxKeyLength:
		return clientError(http.StatusBadRequest, "the key is %d characters long; at most %d are allowed", len(key), maxKeyLength)
	case strings.Contains(key, ","):
		return clientError(http.StatusBadRequest, "the key %q contains a comma", key)
	}
	return nil
}

// checkVersion refuses a version that is not the short token
// @actions/cache sends.
func checkVersion(version string) error {
	if !validVersion.MatchString(version) {
		return clientError(http.StatusBadRequest, "the version %q is not a short string of letters, digits, '.', '_' or '-'", version)
	}
	return nil
}

// newID picks an entry id that JavaScript numbers hold exactly.
func newID() (int64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return int64(binary.BigEndian.Uint64(b[:])>>11) + 1, nil
}

// reservationOf finds the upload id of the job's repository.
func (h *Handler) reservationOf(g *grant, idText string) (*reservation, error) {
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil {
		return nil, clientError(http.StatusBadRequest, "%q is not a cache id", idText)
	}
	h.entries.mu.Lock()
	res, ok := h.entries.pending[id]
	h.entries.mu.Unlock()
	if !ok || res.grant.scope.Repository != g.scope.Repository {
		return nil, clientError(http.StatusNotFound, "no upload with id %d is in progress for %s", id, g.scope.Repository)
	}
	return res, nil
}

// uploadChunk writes one chunk: PATCH caches/<id> with Content-Range
// `bytes START-END/*`. Chunks come in any order, several at once.
func (h *Handler) uploadChunk(r *http.Request, g *grant, idText string) error {
	res, err := h.reservationOf(g, idText)
	if err != nil {
		return err
	}
	start, end, err := parseContentRange(r.Header.Get("Content-Range"))
	if err != nil {
		return err
	}
	limit := res.declared
	if limit < 0 {
		limit = h.keep.maxSize
	}
	if end > limit {
		return clientError(http.StatusBadRequest, "the chunk %d-%d ends past the %d bytes reserved", start, end-1, limit)
	}
	res.mu.Lock()
	res.busy++
	res.mu.Unlock()
	defer func() {
		res.mu.Lock()
		res.busy--
		res.mu.Unlock()
	}()
	n, err := io.Copy(io.NewOffsetWriter(res.upload, start), io.LimitReader(r.Body, end-start))
	uploadedBytes.WithLabelValues(h.label).Add(float64(n))
	if storageFull(err) {
		return err
	}
	if err != nil {
		return clientError(http.StatusBadRequest, "receiving the chunk %d-%d: %v", start, end-1, err)
	}
	if n < end-start {
		return clientError(http.StatusBadRequest, "the chunk %d-%d has only %d bytes", start, end-1, n)
	}
	if extra, _ := r.Body.Read(make([]byte, 1)); extra > 0 {
		return clientError(http.StatusBadRequest, "the chunk's body is longer than its Content-Range %d-%d", start, end-1)
	}
	res.mu.Lock()
	defer res.mu.Unlock()
	return res.record(span{start, end})
}

// parseContentRange reads `bytes START-END/*` (END inclusive) into a range
// with an exclusive end.
func parseContentRange(header string) (start, end int64, err error) {
	spec, ok := strings.CutPrefix(header, "bytes ")
	if !ok {
		return 0, 0, clientError(http.StatusBadRequest, "the Content-Range %q is not `bytes START-END/*`", header)
	}
	spec, _, _ = strings.Cut(spec, "/")
	first, last, ok := strings.Cut(spec, "-")
	start, err1 := strconv.ParseInt(first, 10, 64)
	last64, err2 := strconv.ParseInt(last, 10, 64)
	if !ok || err1 != nil || err2 != nil || start < 0 || last64 < start {
		return 0, 0, clientError(http.StatusBadRequest, "the Content-Range %q is not `bytes START-END/*`", header)
	}
	return start, last64 + 1, nil
}

type commitRequest struct {
	Size *int64 `json:"size"`
}

// commit finishes an entry: POST caches/<id> {"size"}. The archive must be
// whole: every byte of [0, size) written, nothing past it.
func (h *Handler) commit(w http.ResponseWriter, r *http.Request, g *grant, idText string) error {
	var req commitRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	res, err := h.reservationOf(g, idText)
	if err != nil {
		return err
	}
	if req.Size == nil || *req.Size < 0 {
		return clientError(http.StatusBadRequest, "the commit does not give the archive's size")
	}
	size := *req.Size
	if res.declared >= 0 && size != res.declared {
		return clientError(http.StatusBadRequest, "the archive is %d bytes, but %d were reserved", size, res.declared)
	}
	s := h.entries
	s.mu.Lock()
	if s.pending[res.entry.ID] != res {
		s.mu.Unlock()
		return clientError(http.StatusNotFound, "the upload %d is no longer in progress", res.entry.ID)
	}
	res.mu.Lock()
	busy, whole := res.busy, res.covers(size)
	res.mu.Unlock()
	switch {
	case busy > 0:
		s.mu.Unlock()
		return clientError(http.StatusConflict, "chunks of the upload %d are still being received", res.entry.ID)
	case !whole:
		s.mu.Unlock()
		return clientError(http.StatusBadRequest, "the chunks received do not make an archive of exactly %d bytes", size)
	}
	delete(s.pending, res.entry.ID)
	s.mu.Unlock()

	e := res.entry
	now := time.Now()
	e.Size, e.Created, e.Used = size, now, now
	if err := res.upload.Commit(); err != nil {
		return fmt.Errorf("storing the entry's archive: %w", err)
	}
	if err := s.writeRecord(r.Context(), &e); err != nil {
		_ = s.store.Delete(r.Context(), archiveName(e.ID))
		return fmt.Errorf("storing the entry's record: %w", err)
	}
	s.mu.Lock()
	s.entries[e.ID] = &e
	s.mu.Unlock()
	h.logger.Info("cache entry saved", zap.Int64("entry", e.ID), zap.String("repository", e.Repository),
		zap.String("ref", e.Ref), zap.String("key", e.Key), zap.Int64("size", e.Size))
	savedEntries.WithLabelValues(h.label).Inc()
	s.prune(r.Context(), h.keep, now)
	return writeJSON(w, http.StatusOK, struct{}{})
}

// dropGrant aborts the uploads a job left unfinished when it ended.
func (s *entryStore) dropGrant(g *grant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, res := range s.pending {
		if res.grant == g {
			res.upload.Abort()
			delete(s.pending, id)
		}
	}
}
