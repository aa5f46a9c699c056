package caddynix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"go.uber.org/zap"
)

// The sources of a nix_cache are asked in a fixed order, and the first
// that has a path answers: the cache itself (root or storage), then the
// live store, then each upstream in the order configured. A source that
// fails (a database, an upstream) is logged; a failing local source
// answers 503, a failing upstream is passed over.

// heldBack is how much of an upstream's file is held back until it has
// been checked: a NAR's last string.
const heldBack = 16

// isNotFound reports whether err is a handler's 404.
func isNotFound(err error) bool {
	var herr caddyhttp.HandlerError
	return errors.As(err, &herr) && herr.StatusCode == http.StatusNotFound
}

// serveNarInfoFromSources answers a narinfo the cache does not hold.
func (h *Handler) serveNarInfoFromSources(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	if h.live != nil {
		if err := h.serveLiveNarInfo(w, r, req); !isNotFound(err) {
			return err
		}
	}
	for _, u := range h.upstreams {
		info, err := u.narInfo(r.Context(), h.StoreDir, req.Hash)
		if errors.Is(err, errUpstreamMiss) {
			continue
		}
		if err != nil {
			if r.Context().Err() != nil {
				return err
			}
			h.logger.Warn("passing over an upstream", zap.String("upstream", u.base), zap.String("hash", req.Hash), zap.Error(err))
			continue
		}
		h.upstreamNars.put(info.URL, upstreamNarinfo{from: u, info: info})
		served := *info
		if u.sign {
			if err := nixfmt.Sign(&served, h.keys); err != nil {
				return err
			}
		}
		now := time.Now()
		h.writeNarInfo(w, r, req, &signedNarinfo{modTime: now, lastModified: now.UTC().Format(http.TimeFormat), body: []byte(served.String())})
		return nil
	}
	narinfoLookups.WithLabelValues("missing").Inc()
	return caddyhttp.Error(http.StatusNotFound, nil)
}

// serveFromSources answers a NAR, listing or log the cache does not hold.
func (h *Handler) serveFromSources(w http.ResponseWriter, r *http.Request, req cacheurl.Request) error {
	if h.live != nil {
		if err := h.serveLive(w, r, req); !isNotFound(err) {
			return err
		}
	}
	if req.Kind == cacheurl.Realisation || len(h.upstreams) == 0 {
		return caddyhttp.Error(http.StatusNotFound, nil)
	}
	rel := req.File
	if r.URL.RawQuery != "" {
		rel += "?" + r.URL.RawQuery
	}
	candidates := h.upstreams
	known, isKnown := h.upstreamNars.get(rel)
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
			h.logger.Warn("passing over an upstream", zap.String("upstream", u.base), zap.String("file", rel), zap.Error(err))
			continue
		}
		defer func() { _ = resp.Body.Close() }()
		if !isKnown {
			known = upstreamNarinfo{from: u}
		}
		return h.sendUpstream(w, r, req, known, resp)
	}
	return caddyhttp.Error(http.StatusNotFound, nil)
}

// sendUpstream passes an upstream's answer on. A whole NAR is checked on
// the way against the narinfo it was served with (or, without one, against
// the file hash its name is), and its end held back until it is: one that
// does not match is cut short, and logged.
func (h *Handler) sendUpstream(w http.ResponseWriter, r *http.Request, req cacheurl.Request, from upstreamNarinfo, resp *http.Response) error {
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
			return abortedResponse{err}
		}
		return nil
	}
	keepLater := false
	if info := from.info; info != nil && from.from.keep && info.URL == requestedFile(r, req) {
		switch kept, err := h.keptForm(info); {
		case err != nil:
			from.from.warnUnkeepable(h.logger, info, err)
		case kept.Compression == info.Compression:
			return h.pullThrough(w, r, req, from, kept, resp)
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
		h.logger.Error("an upstream NAR was not passed on whole", zap.String("upstream", from.from.base), zap.String("file", req.File), zap.Error(err))
		return abortedResponse{err}
	}
	if keepLater {
		h.keepInBackground(from)
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

// keptForm is the narinfo under which the cache keeps an upstream path:
// the upstream's, with its NAR named as `nix copy --to file://` names it,
// whatever name the upstream gives it (harmonia's and a live store's
// `nar/<narhash>.nar?hash=…`, or any other). The NAR is kept as the
// upstream sends it, named by its FileHash; where the upstream's narinfo
// has no FileHash (a store that compresses as it serves), the cache
// cannot name it before it has all of it, and keeps it decompressed,
// named by its NarHash, as an uncompressed `nix copy` would. The result
// passes the cache's rule for what it stores.
func (h *Handler) keptForm(info *narinfo.NarInfo) (*narinfo.NarInfo, error) {
	kept := *info
	kept.Signatures = slices.DeleteFunc(slices.Clone(info.Signatures), func(sig signature.Signature) bool {
		return h.receiver.OwnKeyName(sig.Name)
	})
	if info.FileHash == nil || info.FileHash.Algo() != nixhash.SHA256 || info.FileSize == 0 {
		kept.Compression, kept.FileHash, kept.FileSize = "none", info.NarHash, info.NarSize
	}
	kept.URL = "nar/" + kept.FileHash.Format(nixhash.NixBase32, false) + nixfmt.NarCompressions[kept.Compression]
	if _, err := nixfmt.Admit([]byte(kept.String()), h.StoreDir, path.Base(info.StorePath)[:cacheurl.HashLen]); err != nil {
		return nil, err
	}
	return &kept, nil
}

// pullThrough streams an upstream NAR to the client and into the cache at
// once, and checks it in full as an upload is checked. A NAR that does
// not match its narinfo is cut short for the client and never stored; one
// that matches is kept, with whatever of its closure the cache lacks, in
// the background.
func (h *Handler) pullThrough(w http.ResponseWriter, r *http.Request, req cacheurl.Request, from upstreamNarinfo, kept *narinfo.NarInfo, resp *http.Response) error {
	info := from.info
	ctx := r.Context()
	up, err := h.store.Create(ctx, kept.URL)
	if err != nil {
		return h.storageFailure("keeping an upstream NAR", kept.URL, err)
	}
	defer up.Abort()
	w.WriteHeader(http.StatusOK)
	tail := &iox.TailWriter{W: w, Hold: heldBack}
	meta, err := upload.ReceiveNar(io.MultiWriter(up, tail), resp.Body, info.Compression, h.receiver.MaxNarSize(), -1)
	if err == nil {
		err = meta.Matches(info)
	}
	if err != nil {
		h.logger.Error("an upstream NAR was not passed on whole, and is not kept", zap.String("upstream", from.from.base), zap.String("file", req.File), zap.Error(err))
		return abortedResponse{err}
	}
	if err := up.Commit(); err != nil {
		h.logger.Error("keeping an upstream NAR", zap.String("file", kept.URL), zap.Error(err))
	} else {
		h.receiver.NoteNar(kept.URL, meta)
	}
	if err := tail.Release(); err != nil {
		return abortedResponse{err}
	}
	// The client has its NAR; keeping the narinfo, and the references
	// the cache lacks, must not wait on it.
	h.keepInBackground(from)
	return nil
}

// keepInBackground keeps an upstream path whose NAR is stored, fetching
// first whatever of its closure the cache lacks, while the configuration
// runs. One closure is fetched at a time per cache.
func (h *Handler) keepInBackground(from upstreamNarinfo) {
	h.keeping.Add(1)
	go func() {
		defer h.keeping.Done()
		if err := h.keepSlots.Acquire(h.ctx, 1); err != nil {
			return
		}
		defer h.keepSlots.Release(1)
		h.keepClosure(h.ctx, from, map[string]bool{})
	}()
}

// keepClosure keeps an upstream path: its references the cache does not
// hold are fetched from the same upstream and kept first, each checked in
// full, then its NAR if it is not stored, then its narinfo. A path
// missing from the upstream, or that cannot be kept, leaves its
// referrers unkept, as a closure is kept whole or not at all.
func (h *Handler) keepClosure(ctx context.Context, from upstreamNarinfo, visited map[string]bool) bool {
	info := from.info
	self := path.Base(info.StorePath)
	visited[self] = true
	for _, ref := range info.References {
		if ref == self || visited[ref] {
			continue
		}
		refHash := ref[:cacheurl.HashLen]
		if stored, err := h.receiver.StoredNarInfo(ctx, refHash); err != nil || stored != nil {
			if err != nil {
				h.logger.Warn("not keeping an upstream path", zap.String("store_path", info.StorePath), zap.Error(err))
				return false
			}
			continue
		}
		refInfo, err := from.from.narInfo(ctx, h.StoreDir, refHash)
		if err == nil {
			_, err = h.keptForm(refInfo)
		}
		if err != nil {
			h.logger.Info("not keeping an upstream path: a reference cannot be kept", zap.String("store_path", info.StorePath), zap.String("reference", ref), zap.Error(err))
			return false
		}
		if !h.keepClosure(ctx, upstreamNarinfo{from: from.from, info: refInfo}, visited) {
			return false
		}
	}
	kept, err := h.keptForm(info)
	if err != nil {
		from.from.warnUnkeepable(h.logger, info, err)
		return false
	}
	if _, err := h.store.Stat(ctx, kept.URL); err != nil {
		if err := h.fetchNar(ctx, from, kept); err != nil {
			h.logger.Warn("not keeping an upstream path: fetching its NAR", zap.String("store_path", info.StorePath), zap.String("upstream", from.from.base), zap.Error(err))
			return false
		}
	}
	return h.keepNarInfo(ctx, from, kept)
}

// fetchNar stores an upstream path's NAR as kept names it, checked in
// full against the upstream's narinfo and against kept.
func (h *Handler) fetchNar(ctx context.Context, from upstreamNarinfo, kept *narinfo.NarInfo) error {
	info := from.info
	resp, err := from.from.get(ctx, info.URL, nil)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body := io.Reader(resp.Body)
	if kept.Compression != info.Compression {
		plain, release, err := nixfmt.Decompressor(info.Compression, resp.Body)
		if err != nil {
			return err
		}
		defer release()
		body = plain
	}
	up, err := h.store.Create(ctx, kept.URL)
	if err != nil {
		return err
	}
	defer up.Abort()
	meta, err := upload.ReceiveNar(up, body, kept.Compression, h.receiver.MaxNarSize(), -1)
	if err == nil {
		err = meta.Matches(kept)
	}
	if err != nil {
		return err
	}
	if err := up.Commit(); err != nil {
		return err
	}
	h.receiver.NoteNar(kept.URL, meta)
	return nil
}

// keepNarInfo stores an upstream path's narinfo, whose NAR and references
// are stored, as an upload's is stored.
func (h *Handler) keepNarInfo(ctx context.Context, from upstreamNarinfo, info *narinfo.NarInfo) bool {
	kept, err := h.receiver.CommitKept(ctx, info, &index.Pusher{Token: "upstream " + from.from.base})
	if err != nil {
		h.logger.Info("not keeping an upstream path", zap.String("store_path", info.StorePath), zap.String("upstream", from.from.base), zap.Error(err))
		return false
	}
	h.logger.Debug("kept an upstream path", zap.String("store_path", kept.StorePath), zap.String("upstream", from.from.base))
	return true
}
