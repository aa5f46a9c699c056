package serve

import (
	"errors"
	"io/fs"
	"net/http"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"go.uber.org/zap"
)

// NarInfo serves a narinfo signed by every configured key. A narinfo
// that does not parse, or that describes another path than the one asked
// for, is logged and answered as missing: a client then builds the path
// instead of failing. What the storage lacks is asked of the overlay
// that overlay finds, if any, and then of the sources.
func (c *Cache) NarInfo(w http.ResponseWriter, r *http.Request, req cacheurl.Request, overlay FindOverlay) error {
	if entry, ok := c.narinfos.current(req.File); ok {
		c.writeNarInfo(w, r, req, entry)
		return nil
	}
	// A stat is enough to tell whether the cached signed copy is current;
	// the file is opened only to sign it again.
	mark := c.narinfos.mark()
	info, err := c.store.Stat(r.Context(), req.File)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return c.storageFailure("opening narinfo", req.File, err)
		}
		return c.fallback(overlay,
			func(o *Cache) error { return o.NarInfo(w, r, req, nil) },
			func() error { return c.serveNarInfoFromSources(w, r, req) })
	}
	var readErr error
	entry, err := c.narinfos.get(req.File, info, mark, func() ([]byte, error) {
		data, err := storage.ReadAll(r.Context(), c.store, req.File, nixfmt.MaxNarInfoSize)
		if err != nil {
			readErr = err
			return nil, err
		}
		return c.signedNarInfo(data, req.Hash)
	})
	if readErr != nil && !errors.Is(readErr, fs.ErrNotExist) {
		return c.storageFailure("reading narinfo", req.File, readErr)
	}
	if err != nil {
		c.metrics.NarinfoLookup("missing")
		c.logger.Error("serving narinfo as missing", zap.String("file", req.File), zap.Error(err))
		return httpx.Error(http.StatusNotFound, nil)
	}
	c.writeNarInfo(w, r, req, entry)
	return nil
}

// writeNarInfo answers with a signed narinfo.
func (c *Cache) writeNarInfo(w http.ResponseWriter, r *http.Request, req cacheurl.Request, entry *signedNarinfo) {
	c.metrics.NarinfoLookup("served")
	if c.state != nil {
		c.state.MarkServed(req.Hash)
	}
	w.Header().Set("Content-Type", cacheurl.ContentType(cacheurl.NarInfo))
	if httpx.PlainGet(r) {
		// What a substituter sends.
		httpx.WritePlainHeader(w, entry.lastModified, int64(len(entry.body)))
		if r.Method != http.MethodHead {
			_, _ = w.Write(entry.body)
		}
		return
	}
	if !httpx.DropEmptySuffixRanges(w, r, int64(len(entry.body))) {
		return
	}
	Memory(w, r, entry.modTime, entry.body)
}

// signedNarInfo checks and signs a stored narinfo.
func (c *Cache) signedNarInfo(data []byte, hash string) ([]byte, error) {
	info, err := nixfmt.Admit(data, c.storeDir, hash)
	if err != nil {
		return nil, err
	}
	if err := nixfmt.Sign(info, c.keys); err != nil {
		return nil, err
	}
	return []byte(info.String()), nil
}

// serveNarInfoFromSources answers a narinfo the cache does not hold from
// its live store or upstreams.
func (c *Cache) serveNarInfoFromSources(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	body, modTime, err := c.sources.NarInfo(r.Context(), req.Hash)
	if errors.Is(err, sources.ErrNotFound) {
		c.metrics.NarinfoLookup("missing")
	}
	if err != nil {
		return c.fromSources(err)
	}
	c.writeNarInfo(w, r, req, &signedNarinfo{modTime: modTime, lastModified: httpx.LastModified(modTime), body: body})
	return nil
}
