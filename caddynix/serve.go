package caddynix

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strconv"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"go.uber.org/zap"
)

// serveFile serves one file of the cache layout with http.ServeContent, so
// that Range, HEAD and conditional requests work and the kernel can send the
// file directly. A missing file is a 404, never a 5xx.
func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	if req.Kind == cacheurl.Nar && h.redirect > 0 {
		return h.redirectNar(w, r, req)
	}
	obj, info, err := h.store.Open(r.Context(), req.File)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return h.fromSources(h.sources.ServeFile(w, r, req))
		}
		return h.storageFailure("opening cache file", req.File, err)
	}
	defer func() { _ = obj.Close() }()
	if !httpx.DropEmptySuffixRanges(w, r, info.Size) {
		return nil
	}

	header := w.Header()
	header.Set("Content-Type", cacheurl.ContentType(req.Kind))
	if info.ContentEncoding != "" {
		// Stored encoded (a listing or log Nix compressed into a bucket):
		// sent as stored, with its encoding, as Nix expects it.
		header.Set("Content-Encoding", info.ContentEncoding)
	}
	if req.Kind == cacheurl.Nar {
		// A NAR's name is the hash of its content, so it never changes and
		// the name is a strong validator.
		header.Set("Cache-Control", cacheurl.Immutable)
		header.Set("ETag", `"`+path.Base(req.File)+`"`)
		if enc := path.Ext(req.File); enc != ".nar" {
			header.Set("Content-Type", cacheurl.NarContentType(enc))
		}
	}
	if f, ok := obj.(*os.File); ok {
		w = newSendfileWriter(w, f, info.Size)
	} else {
		w = newStreamWriter(w)
	}
	http.ServeContent(w, r, "", info.ModTime, obj)
	return nil
}

// redirectNar sends the client to download a NAR from the storage itself,
// through a URL signed for a short time. A missing NAR is still a 404.
func (h *Handler) redirectNar(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	if _, err := h.store.Stat(r.Context(), req.File); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return h.fromSources(h.sources.ServeFile(w, r, req))
		}
		return h.storageFailure("looking up a NAR", req.File, err)
	}
	signed, err := h.store.(storage.Presigner).PresignGet(r.Context(), req.File, h.redirect)
	if err != nil {
		return h.storageFailure("signing a NAR's URL", req.File, err)
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, signed, http.StatusTemporaryRedirect)
	return nil
}

// storageFailure answers a request whose object the storage could not
// tell about, for example an S3 server that does not answer: a 503, never
// a 404 that a client would remember as a miss. A file that is a symlink
// out of the cache root is a 404 instead: the cache will never serve it,
// and a 503 would make Nix give up on the cache for the rest of its
// command.
func (h *Handler) storageFailure(what, file string, err error) error {
	if errors.Is(err, storage.ErrOutsideRoot) {
		// Someone planted it: worth a warning, once, since anyone can ask.
		if _, warned := h.warnedOutside.LoadOrStore(file, true); !warned {
			h.logger.Warn("not following a symlink out of the cache root; the file is answered as missing", zap.String("file", file), zap.Error(err))
		}
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	h.logger.Error(what, zap.String("file", file), zap.Error(err))
	return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("the cache's storage failed: %w", err))
}

// serveNarInfo serves a narinfo signed by every configured key. A narinfo
// that does not parse, or that describes another path than the one asked
// for, is logged and answered as missing: a client then builds the path
// instead of failing.
func (h *Handler) serveNarInfo(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	if entry, ok := h.narinfos.current(req.File); ok {
		h.writeNarInfo(w, r, req, entry)
		return nil
	}
	// A stat is enough to tell whether the cached signed copy is current;
	// the file is opened only to sign it again.
	mark := h.narinfos.mark()
	info, err := h.store.Stat(r.Context(), req.File)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return h.storageFailure("opening narinfo", req.File, err)
		}
		return h.serveNarInfoFromSources(w, r, req)
	}
	var readErr error
	entry, err := h.narinfos.get(req.File, info, mark, func() ([]byte, error) {
		data, err := storage.ReadAll(r.Context(), h.store, req.File, nixfmt.MaxNarInfoSize)
		if err != nil {
			readErr = err
			return nil, err
		}
		return h.signedNarInfo(data, req.Hash)
	})
	if readErr != nil && !errors.Is(readErr, fs.ErrNotExist) {
		return h.storageFailure("reading narinfo", req.File, readErr)
	}
	if err != nil {
		narinfoLookups.WithLabelValues("missing").Inc()
		h.logger.Error("serving narinfo as missing", zap.String("file", req.File), zap.Error(err))
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	h.writeNarInfo(w, r, req, entry)
	return nil
}

// writeNarInfo answers with a signed narinfo.
func (h *Handler) writeNarInfo(w http.ResponseWriter, r *http.Request, req cacheurl.Request, entry *signedNarinfo) {
	narinfoLookups.WithLabelValues("served").Inc()
	h.state.MarkServed(req.Hash)
	w.Header().Set("Content-Type", cacheurl.ContentType(cacheurl.NarInfo))
	if httpx.PlainGet(r) {
		// What a substituter sends: answered as http.ServeContent would,
		// without its checks for headers the request does not have.
		header := w.Header()
		header.Set("Last-Modified", entry.lastModified)
		header.Set("Accept-Ranges", "bytes")
		header.Set("Content-Length", strconv.Itoa(len(entry.body)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(entry.body)
		}
		return
	}
	if !httpx.DropEmptySuffixRanges(w, r, int64(len(entry.body))) {
		return
	}
	http.ServeContent(memoryBodyWriter{w}, r, "", entry.modTime, bytes.NewReader(entry.body))
}

// signedNarInfo checks and signs a stored narinfo.
func (h *Handler) signedNarInfo(data []byte, hash string) ([]byte, error) {
	info, err := nixfmt.Admit(data, h.StoreDir, hash)
	if err != nil {
		return nil, err
	}
	if err := nixfmt.Sign(info, h.keys); err != nil {
		return nil, err
	}
	return []byte(info.String()), nil
}

// serveNarInfoFromSources answers a narinfo the cache does not hold from
// its live store or upstreams.
func (h *Handler) serveNarInfoFromSources(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	body, modTime, err := h.sources.NarInfo(r.Context(), req.Hash)
	if errors.Is(err, sources.ErrNotFound) {
		narinfoLookups.WithLabelValues("missing").Inc()
	}
	if err != nil {
		return h.fromSources(err)
	}
	h.writeNarInfo(w, r, req, &signedNarinfo{modTime: modTime, lastModified: modTime.UTC().Format(http.TimeFormat), body: body})
	return nil
}
