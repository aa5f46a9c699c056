package serve

import (
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

// File serves one file of the cache layout: a plain GET or HEAD as
// http.ServeContent would, and anything else with ServeContent, so that
// Range and conditional requests work; the kernel sends the file directly
// where it can. What the storage lacks is asked of the overlay that
// overlay finds, if any, and then of the sources; a file none has is a
// 404, never a 5xx.
func (c *Cache) File(w http.ResponseWriter, r *http.Request, req cacheurl.Request, overlay FindOverlay) error {
	if req.Kind == cacheurl.Nar && c.redirect > 0 {
		return c.redirectNar(w, r, req, overlay)
	}
	ctx := r.Context()
	if spliceable(r) {
		ctx = storage.WithConnReads(ctx)
	}
	obj, info, err := c.store.Open(ctx, req.File)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return c.fileFallback(w, r, req, overlay)
		}
		return c.storageFailure("opening cache file", req.File, err)
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
	// storageFailed is whether the storage failed once the header was out.
	storageFailed := false
	failed := func() {
		storageFailed = true
		c.narinfos.distrust()
	}
	var content io.ReadSeeker = obj
	f, isFile := obj.(*os.File)
	if !isFile {
		content = &failureNoticingObject{Object: obj, failed: failed}
	}
	connReader, readsConns := obj.(storage.ConnReader)
	switch {
	case isFile && r.ProtoMajor == 1:
		// Files in the cache are replaced by rename, never written in
		// place, so the file cannot grow while it is sent.
		w = caddyutil.NewSendfileWriter(w, f, info.Size)
	case readsConns && spliceable(r):
		w = newSpliceWriter(w, r, connReader, content, failed)
	default:
		// Copied in large writes: from S3, and over HTTP/2, where every
		// write waits for the connection's one writer goroutine, which
		// sends a NAR a quarter faster than io.Copy's.
		w = newStreamWriter(w, r)
	}
	if info.ContentEncoding == "" && httpx.PlainGet(r) {
		// What a substituter sends.
		httpx.WritePlainHeader(w, httpx.LastModified(info.ModTime), info.Size)
		if r.Method != http.MethodHead {
			sent, err := io.Copy(w, &io.LimitedReader{R: content, N: info.Size})
			if storageFailed {
				return c.failedMidway(req.File, sent, info.Size, err)
			}
		}
		return nil
	}
	http.ServeContent(w, r, "", info.ModTime, content)
	if storageFailed {
		return c.failedMidway(req.File, -1, info.Size, nil)
	}
	return nil
}

// redirectNar sends the client to download a NAR from the storage itself,
// through a URL signed for a short time. A missing NAR is still a 404.
func (c *Cache) redirectNar(w http.ResponseWriter, r *http.Request, req cacheurl.Request, overlay FindOverlay) error {
	if _, err := c.store.Stat(r.Context(), req.File); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return c.fileFallback(w, r, req, overlay)
		}
		return c.storageFailure("looking up a NAR", req.File, err)
	}
	signed, err := c.store.(storage.Presigner).PresignGet(r.Context(), req.File, c.redirect)
	if err != nil {
		return c.storageFailure("signing a NAR's URL", req.File, err)
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, signed, http.StatusTemporaryRedirect)
	return nil
}

// fileFallback answers a file the storage lacks.
func (c *Cache) fileFallback(w http.ResponseWriter, r *http.Request, req cacheurl.Request, overlay FindOverlay) error {
	return c.fallback(overlay,
		func(o *Cache) error { return o.File(w, r, req, nil) },
		func() error { return c.fromSources(c.sources.ServeFile(w, r, req)) })
}
