package caddynix

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"go.uber.org/zap"
)

// contentTypes maps the cache's file kinds to what Nix itself sends for them.
var contentTypes = map[requestKind]string{
	kindNarinfo:     "text/x-nix-narinfo",
	kindNar:         "application/x-nix-nar",
	kindListing:     "application/json",
	kindLog:         "text/plain; charset=utf-8",
	kindRealisation: "application/json",
}

// serveFile serves one file of the cache layout with http.ServeContent, so
// that Range, HEAD and conditional requests work and the kernel can send the
// file directly. A missing file is a 404, never a 5xx.
func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request, req cacheRequest) error {
	f, info, err := h.openFile(req.file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return caddyhttp.Error(http.StatusNotFound, nil)
		}
		if info, lerr := h.dir.Lstat(filepath.FromSlash(req.file)); lerr == nil && info.Mode()&fs.ModeSymlink != 0 {
			// A symlink out of the cache: anyone can ask for it, so it
			// must not fill the error log.
			h.logger.Debug("not following a symlink out of the cache root", zap.String("file", req.file), zap.Error(err))
		} else {
			h.logger.Error("opening cache file", zap.String("file", req.file), zap.Error(err))
		}
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	defer func() { _ = f.Close() }()
	if !dropEmptySuffixRanges(w, r, info.Size()) {
		return nil
	}

	header := w.Header()
	header.Set("Content-Type", contentTypes[req.kind])
	if req.kind == kindNar {
		// A NAR's name is the hash of its content, so it never changes and
		// the name is a strong validator.
		header.Set("Cache-Control", "public, max-age=31536000, immutable")
		header.Set("ETag", `"`+path.Base(req.file)+`"`)
		if enc := path.Ext(req.file); enc != ".nar" {
			header.Set("Content-Type", narContentType(enc))
		}
	}
	http.ServeContent(newSendfileWriter(w, f, info.Size()), r, "", info.ModTime(), f)
	return nil
}

// maxNarinfoSize bounds what is read of a narinfo file. Real ones are a few
// kilobytes even with thousands of references.
const maxNarinfoSize = 1 << 20

// serveNarInfo serves a narinfo signed by every configured key. A narinfo
// that does not parse, or that describes another path than the one asked
// for, is logged and answered as missing: a client then builds the path
// instead of failing.
func (h *Handler) serveNarInfo(w http.ResponseWriter, r *http.Request, req cacheRequest) error {
	// A stat is enough to tell whether the cached signed copy is current;
	// the file is opened only to sign it again.
	info, err := h.statFile(req.file)
	if err != nil {
		narinfoLookups.WithLabelValues("missing").Inc()
		if !errors.Is(err, fs.ErrNotExist) {
			h.logger.Error("opening narinfo", zap.String("file", req.file), zap.Error(err))
		}
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	body, err := h.narinfos.get(req.file, info, func() ([]byte, error) {
		f, _, err := h.openFile(req.file)
		if err != nil {
			return nil, err
		}
		defer func() { _ = f.Close() }()
		return h.signedNarInfo(f, req.hash)
	})
	if err != nil {
		narinfoLookups.WithLabelValues("missing").Inc()
		h.logger.Error("serving narinfo as missing", zap.String("file", req.file), zap.Error(err))
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	narinfoLookups.WithLabelValues("served").Inc()
	if !dropEmptySuffixRanges(w, r, int64(len(body))) {
		return nil
	}
	w.Header().Set("Content-Type", contentTypes[kindNarinfo])
	http.ServeContent(memoryBodyWriter{w}, r, "", info.ModTime(), bytes.NewReader(body))
	return nil
}

// signedNarInfo reads, checks and signs a stored narinfo.
func (h *Handler) signedNarInfo(f io.Reader, hash string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(f, maxNarinfoSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading narinfo: %w", err)
	}
	info, err := h.servableNarInfo(data, hash)
	if err != nil {
		return nil, err
	}
	if err := signNarInfo(info, h.keys); err != nil {
		return nil, err
	}
	return []byte(info.String()), nil
}

// servableNarInfo is the rule for what is served as the narinfo of the
// path with hash: at most maxNarinfoSize bytes, parsing with Nix's rules,
// and describing that path in this cache's store. Uploads check what they
// store with it too, so that nothing accepted goes unserved.
func (h *Handler) servableNarInfo(data []byte, hash string) (*narinfo.NarInfo, error) {
	if len(data) > maxNarinfoSize {
		return nil, fmt.Errorf("narinfo is larger than %d bytes", maxNarinfoSize)
	}
	info, err := parseNarInfo(data)
	if err != nil {
		return nil, err
	}
	if dir, base := path.Split(info.StorePath); dir != h.StoreDir+"/" || !strings.HasPrefix(base, hash+"-") {
		return nil, fmt.Errorf("narinfo describes %s, not a path %s/%s-…", info.StorePath, h.StoreDir, hash)
	}
	return info, nil
}

// statFile describes a regular file below the cache root, as openFile would
// open it.
func (h *Handler) statFile(rel string) (fs.FileInfo, error) {
	info, err := h.dir.Stat(filepath.FromSlash(rel))
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, fs.ErrNotExist
	}
	return info, nil
}

// openFile opens a regular file below the cache root. rel has already been
// checked against the cache's URL shapes; os.Root additionally refuses any
// name that would resolve outside the root, including through symlinks.
func (h *Handler) openFile(rel string) (*os.File, fs.FileInfo, error) {
	f, err := h.dir.Open(filepath.FromSlash(rel))
	if err != nil {
		return nil, nil, err
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	if !info.Mode().IsRegular() {
		_ = f.Close()
		return nil, nil, fs.ErrNotExist
	}
	return f, info, nil
}

// narContentType is the content type of a compressed NAR, by file extension.
func narContentType(ext string) string {
	switch ext {
	case ".xz":
		return "application/x-xz"
	case ".zst":
		return "application/zstd"
	case ".bz2":
		return "application/x-bzip2"
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}
