package caddynix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/xz"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// UploadConfig enables uploads with `nix copy --to http(s)://…`. Without it,
// the cache is read-only and PUT answers 405.
type UploadConfig struct {
	// Tokens are accepted as upload credentials: as the password of Basic
	// authentication (what nix sends from a netrc file, with any user name)
	// or as a Bearer token. Placeholders such as {env.CACHE_UPLOAD_TOKEN} are
	// expanded. At least 16 characters. Caddyfile: `token` (repeatable).
	Tokens []string `json:"tokens,omitempty"`

	// TokenFiles are files holding one token each, which must not be
	// readable by group or others. Caddyfile: `token_file` (repeatable).
	//
	// With neither tokens nor token files, only the short-lived credentials
	// that a gitea_runner in the same Caddy gives its jobs are accepted.
	TokenFiles []string `json:"token_files,omitempty"`

	// MaxNarSize bounds a NAR upload, compressed and uncompressed, in
	// bytes. Larger uploads get 413. Default: 8 GiB. Caddyfile:
	// `max_nar_size`, which also takes sizes such as 8GiB.
	MaxNarSize int64 `json:"max_nar_size,omitempty"`

	// MaxLogSize bounds a build log upload once its Content-Encoding is
	// undone, in bytes. Larger uploads get 413. Default: 64 MiB.
	// Caddyfile: `max_log_size`.
	MaxLogSize int64 `json:"max_log_size,omitempty"`
}

const (
	defaultMaxNarSize = 8 << 30
	defaultMaxLogSize = 64 << 20
	// Listings of huge closures run to a few megabytes.
	maxListingSize = 64 << 20
	// Realisations and nix-cache-info are small JSON and text documents.
	maxSmallDocSize = 1 << 20
)

// jsonCheckMemory bounds the memory that checking uploaded JSON documents
// takes at once, whatever the number of uploads: each document waits for
// its size in this budget before it is read into memory.
var jsonCheckMemory = semaphore.NewWeighted(maxListingSize)

// uploadError is an upload refused with a 4xx status and a one-line reason.
type uploadError struct {
	status int
	reason string // the metrics label
	msg    string
	// retryAfter, when set, is sent as Retry-After.
	retryAfter time.Duration
}

func (e *uploadError) Error() string { return e.msg }

func reject(status int, reason, format string, args ...any) *uploadError {
	return &uploadError{status: status, reason: reason, msg: fmt.Sprintf(format, args...)}
}

// serveUpload handles PUT. Every upload is authenticated; nothing is visible
// until it has been checked and renamed into place.
func (h *Handler) serveUpload(w http.ResponseWriter, r *http.Request, req cacheurl.Request, ok bool) error {
	kind := "other"
	if ok {
		kind = req.Kind.String()
	}
	body := &trackedBody{ReadCloser: r.Body}
	r.Body = body
	err := h.upload(r, req, ok)
	clientErr := body.err
	if !body.eof && r.ProtoMajor == 1 && r.ContentLength != 0 {
		finishUnreadBody(w, r, body)
	}
	var uerr *uploadError
	switch {
	case err == nil:
		uploadsTotal.WithLabelValues(kind, "stored").Inc()
		w.WriteHeader(http.StatusCreated)
		return nil
	case clientErr != nil:
		// The client went away or stopped sending: not the server's fault.
		uploadsTotal.WithLabelValues(kind, "aborted").Inc()
		h.logger.Info("upload aborted by the client", zap.String("path", r.URL.Path), zap.NamedError("reason", clientErr))
		http.Error(w, "the upload's body ended early", http.StatusBadRequest)
		return nil
	case errors.As(err, &uerr):
		uploadsTotal.WithLabelValues(kind, "rejected").Inc()
		uploadRejections.WithLabelValues(uerr.reason).Inc()
		h.logger.Info("upload rejected", zap.String("path", r.URL.Path), zap.String("reason", uerr.msg))
		if uerr.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="nix cache upload"`)
		}
		if uerr.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(uerr.retryAfter.Round(time.Second)/time.Second)))
		}
		http.Error(w, uerr.msg, uerr.status)
		return nil
	default:
		uploadsTotal.WithLabelValues(kind, "failed").Inc()
		h.logger.Error("upload failed", zap.String("path", r.URL.Path), zap.Error(err))
		http.Error(w, "the cache could not store the upload; try again", http.StatusInternalServerError)
		return nil
	}
}

// Unwanted bodies of up to maxDrain bytes are read and dropped for up to
// drainWait, so that the connection can carry the client's next request.
const (
	maxDrain  = 256 << 10 // what Go's server itself would read
	drainWait = 250 * time.Millisecond
)

// finishUnreadBody deals with a body the upload did not read to its end
// (the NAR is already stored, or the upload is refused) before the answer
// goes out. Left to itself, Go's server reads up to 256 KiB of it first:
// a client waiting for "100 Continue", as curl and nix do for large
// uploads, would sit out its whole wait (1 s in curl) and then send the
// body for nothing, and a body that stalls would hold the answer until
// the idle timeout. Such connections are closed instead, so the answer
// goes at once; larger bodies Go's server already answers and closes.
func finishUnreadBody(w http.ResponseWriter, r *http.Request, body *trackedBody) {
	switch {
	case !body.read && strings.EqualFold(r.Header.Get("Expect"), "100-continue"):
		w.Header().Set("Connection", "close")
	case r.ContentLength > maxDrain:
	default:
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(drainWait)); err != nil {
			w.Header().Set("Connection", "close")
			return
		}
		n, err := io.Copy(io.Discard, io.LimitReader(body, maxDrain+1))
		_ = rc.SetReadDeadline(time.Time{})
		if err != nil || n > maxDrain {
			w.Header().Set("Connection", "close")
		}
	}
}

// trackedBody notes whether a request body was read at all and to its
// end, and the error, other than its end, that reading it met.
type trackedBody struct {
	io.ReadCloser
	read bool
	eof  bool
	err  error
}

func (b *trackedBody) Read(p []byte) (int, error) {
	b.read = true
	n, err := b.ReadCloser.Read(p)
	switch {
	case errors.Is(err, io.EOF):
		b.eof = true
	case err != nil && b.err == nil:
		b.err = err
	}
	return n, err
}

func (h *Handler) upload(r *http.Request, req cacheurl.Request, ok bool) error {
	token, present := requestToken(r)
	pusher, allowed := h.uploader(token)
	if !present || !allowed {
		return reject(http.StatusUnauthorized, "unauthorized", "uploads need a valid token (Basic password from a netrc file, or Bearer)")
	}
	if !ok {
		return reject(http.StatusBadRequest, "bad_path", "%s is not a binary cache path", r.URL.Path)
	}
	switch req.Kind {
	case cacheurl.Nar:
		return h.putNar(r, req)
	case cacheurl.NarInfo:
		return h.putNarInfo(r, req, pusher)
	case cacheurl.CacheInfo:
		return h.putCacheInfo(r)
	case cacheurl.Listing:
		return h.putDocument(r, req.File, maxListingSize, true)
	case cacheurl.Realisation:
		return h.putDocument(r, req.File, maxSmallDocSize, true)
	case cacheurl.Log:
		return h.putDocument(r, req.File, h.Upload.MaxLogSize, false)
	}
	return reject(http.StatusMethodNotAllowed, "bad_path", "%s cannot be uploaded", r.URL.Path)
}

// uploader returns who presents token: a configured upload token or a
// live credential a runner issued to a job.
func (h *Handler) uploader(token string) (*index.Pusher, bool) {
	if name, ok := h.creds.allows(token); ok {
		return &index.Pusher{Token: name}, true
	}
	if h.shared == nil {
		return nil, false
	}
	job, ok := h.shared.allows(token)
	if !ok {
		return nil, false
	}
	if job == nil {
		return &index.Pusher{Token: "job credential"}, true
	}
	return &index.Pusher{Job: job}, true
}

// narMeta is what a NAR upload was found to hold.
type narMeta struct {
	fileHash [sha256.Size]byte
	fileSize int64
	narHash  [sha256.Size]byte
	narSize  int64
}

// putNar stores a NAR under nar/<FileHash>.nar[.ext], streaming it to a
// temporary file while hashing both the file and its decompressed content.
func (h *Handler) putNar(r *http.Request, req cacheurl.Request) error {
	name := path.Base(req.File)
	compression, ok := nixfmt.NarCompression(req.File)
	if !ok {
		return reject(http.StatusBadRequest, "bad_compression", "%s: unsupported NAR compression (use none, xz, zstd, bzip2 or br)", req.File)
	}
	wantHash, err := nixbase32.DecodeString(name[:52])
	if err != nil {
		return reject(http.StatusBadRequest, "bad_path", "%s: the name is not a nix32 sha256 hash", req.File)
	}
	max := h.Upload.MaxNarSize
	if r.ContentLength > max {
		return reject(http.StatusRequestEntityTooLarge, "too_large", "NAR of %d bytes is larger than max_nar_size (%d bytes)", r.ContentLength, max)
	}
	if _, err := h.store.Stat(r.Context(), req.File); err == nil {
		// NARs are named by their hash: the same name is the same content.
		return nil
	}
	body, release, err := nixfmt.ContentDecoder(r.Header.Get("Content-Encoding"), r.Body)
	if err != nil {
		return reject(http.StatusBadRequest, "bad_encoding", "%v", err)
	}
	defer release()

	largestBlock := int64(-1)
	if compression == "xz" && r.ContentLength > 0 && r.ContentLength <= smallXzNar && body == r.Body {
		// Read whole, its index says how large its dictionaries need be:
		// a small NAR then takes kilobytes, not the 8 MiB nix's preset
		// asks for.
		data := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(body, data); err != nil {
			return fmt.Errorf("receiving the NAR: %w", err)
		}
		if size, err := xz.LargestBlock(data); err == nil {
			largestBlock = size
		}
		body = bytes.NewReader(data)
	}

	up, err := h.store.Create(r.Context(), req.File)
	if err != nil {
		return err
	}
	defer up.Abort()

	meta, err := receiveNar(up, body, compression, max, largestBlock)
	if err != nil {
		return err
	}
	uploadBytes.WithLabelValues("nar").Add(float64(meta.fileSize))
	if !bytes.Equal(meta.fileHash[:], wantHash) {
		return reject(http.StatusBadRequest, "file_hash_mismatch", "the body's sha256 is %s, but the URL names %s", nixbase32.EncodeToString(meta.fileHash[:]), name[:52])
	}
	if err := up.Commit(); err != nil {
		return err
	}
	h.pending.put(req.File, meta)
	return nil
}

// smallXzNar is the size up to which an xz NAR is read whole before it is
// checked: no more than the copy buffer a larger one takes.
const smallXzNar = 1 << 20

// receiveNar copies body to f, hashing it, while a second goroutine
// decompresses the same bytes and hashes the NAR inside. Memory stays
// bounded: nothing is buffered beyond the decompressor's window, which for
// xz is no larger than largestBlock when that is not negative.
func receiveNar(f io.Writer, body io.Reader, compression string, max, largestBlock int64) (narMeta, error) {
	var meta narMeta
	fileHasher := sha256.New()
	pr, pw := io.Pipe()
	type narResult struct {
		hash   []byte
		size   int64
		err    error
		badNar error
	}
	done := make(chan narResult, 1)
	go func() {
		res := narResult{}
		defer func() {
			// Keep reading, so the writer never blocks on a failed decoder.
			_, _ = io.Copy(io.Discard, pr)
			done <- res
		}()
		plain, release, err := nixfmt.DecompressorOfBlocks(compression, pr, largestBlock)
		if err != nil {
			res.err = err
			return
		}
		defer release()
		narHasher := sha256.New()
		counted := &iox.CountingReader{R: io.TeeReader(io.LimitReader(plain, max+1), narHasher)}
		res.badNar = nixfmt.CheckNar(counted)
		// Whatever follows a NAR, or is left of a broken one, is hashed
		// and counted too, so that the size limit and decoding errors
		// still show.
		_, res.err = io.Copy(io.Discard, counted)
		res.size, res.hash = counted.N, narHasher.Sum(nil)
	}()

	// Large chunks: fewer system calls and hand-offs to the decompressor.
	// A body already in memory needs no more than a small one.
	bufSize := 1 << 20
	if _, inMemory := body.(*bytes.Reader); inMemory {
		bufSize = 64 << 10
	}
	buf := make([]byte, bufSize)
	n, copyErr := io.CopyBuffer(io.MultiWriter(f, fileHasher, pw), io.LimitReader(body, max+1), buf)
	pw.CloseWithError(copyErr)
	res := <-done
	switch {
	case copyErr != nil:
		return meta, fmt.Errorf("receiving the NAR: %w", copyErr)
	case n > max:
		return meta, reject(http.StatusRequestEntityTooLarge, "too_large", "NAR is larger than max_nar_size (%d bytes)", max)
	case res.err != nil:
		return meta, reject(http.StatusBadRequest, "bad_compression", "the body is not valid %s data: %v", compression, res.err)
	case res.size > max:
		return meta, reject(http.StatusRequestEntityTooLarge, "too_large", "the decompressed NAR is larger than max_nar_size (%d bytes)", max)
	case res.badNar != nil:
		return meta, reject(http.StatusBadRequest, "not_a_nar", "the body is not a whole NAR after %s decompression: %v", compression, res.badNar)
	}
	copy(meta.fileHash[:], fileHasher.Sum(nil))
	copy(meta.narHash[:], res.hash)
	meta.fileSize, meta.narSize = n, res.size
	return meta, nil
}

// putNarInfo stores a narinfo, the commit point of a path's upload: it is
// accepted only when its NAR is stored and matches it, and its references
// are already in the cache. A path the cache already holds is never
// replaced: the same NAR again changes nothing, another one is a conflict.
func (h *Handler) putNarInfo(r *http.Request, req cacheurl.Request, pusher *index.Pusher) error {
	data, err := h.readSmallBody(r, nixfmt.MaxNarInfoSize)
	if err != nil {
		return err
	}
	uploadBytes.WithLabelValues("narinfo").Add(float64(len(data)))
	info, err := h.admitNarInfo(data, req.Hash)
	if err != nil {
		return err
	}
	existing, _, err := h.storedNarInfo(r.Context(), req.File)
	if err != nil {
		return err
	}
	if existing == nil {
		// Reading the NAR again can take a while: not under the lock.
		if err := h.checkNarInfoNar(r.Context(), info); err != nil {
			return err
		}
	}
	// Only the cache signs with its own key names; a signature claiming one
	// of them is forged, or stale.
	info.Signatures = slices.DeleteFunc(info.Signatures, func(sig signature.Signature) bool {
		return h.ownKeyName(sig.Name)
	})
	// What is stored is checked again as stored, by the rule serving
	// applies, so that nothing accepted is answered as missing.
	stored := []byte(info.String())
	if _, err := h.admitNarInfo(stored, req.Hash); err != nil {
		return fmt.Errorf("as stored: %w", err)
	}
	info, file, again, err := h.commitNarInfo(r.Context(), req, info, stored)
	if err != nil {
		return err
	}
	h.pending.delete(info.URL)
	// A new path was pushed when its narinfo was written: the time a
	// rebuilt index reads from the file.
	at := time.Now()
	if !again {
		at = file.ModTime
	}
	path := index.FromNarInfo(info, file)
	h.state.Record(h.logger, "an upload of "+info.StorePath, func(idx *index.Index) error {
		return idx.RecordPush(path, pusher, at)
	})
	return nil
}

// commitNarInfo stores the narinfo unless the path is there, checking,
// under the lock that collections delete under, that its NAR and its
// references are stored, and telling a running collection that the path
// and what it needs are wanted again. It returns the narinfo the cache
// holds, its file, and whether the cache held it already.
func (h *Handler) commitNarInfo(ctx context.Context, req cacheurl.Request, info *narinfo.NarInfo, stored []byte) (_ *narinfo.NarInfo, _ storage.Info, again bool, err error) {
	needs := []string{req.Hash, info.URL}
	for _, ref := range info.References {
		needs = append(needs, ref[:cacheurl.HashLen])
	}
	requestCtx := ctx
	ctx, release, err := h.state.AdmitCommit(ctx, h.store, h.gcGrace, needs)
	if announced := (*retention.AnnouncedError)(nil); errors.As(err, &announced) {
		// 409, not 503: Nix retries a 503 at once, and a retried upload
		// sends no body.
		return nil, storage.Info{}, false, &uploadError{status: http.StatusConflict, reason: "being_collected", retryAfter: announced.Grace, msg: announced.Error()}
	}
	if err != nil {
		return nil, storage.Info{}, false, err
	}
	defer release()
	defer func() {
		if errors.Is(err, context.DeadlineExceeded) && requestCtx.Err() == nil {
			err = reject(http.StatusServiceUnavailable, "slow_commit", "the storage took too long to commit the narinfo for a collection on another node to see it; upload it again")
		}
	}()
	existing, replaceable, err := h.storedNarInfo(ctx, req.File)
	if err != nil {
		return nil, storage.Info{}, false, err
	}
	if existing == nil {
		if _, err := h.store.Stat(ctx, info.URL); err != nil {
			return nil, storage.Info{}, false, reject(http.StatusBadRequest, "missing_nar", "the NAR %s has not been uploaded: upload it before its narinfo", info.URL)
		}
		self := path.Base(info.StorePath)
		for _, ref := range info.References {
			if ref == self {
				continue
			}
			if _, err := h.store.Stat(ctx, ref[:cacheurl.HashLen]+".narinfo"); err != nil {
				return nil, storage.Info{}, false, reject(http.StatusBadRequest, "missing_reference",
					"reference %s is not in the cache: upload it first (a client that saw it in the cache before it was collected takes it to be there still: copy with `--option narinfo-cache-positive-ttl 0`)", ref)
			}
		}
		if err := h.ensureCacheInfoFile(ctx); err != nil {
			return nil, storage.Info{}, false, err
		}
		if replaceable {
			err = h.writeFile(ctx, req.File, stored)
		} else if created, cerr := h.createFile(ctx, req.File, stored); cerr != nil {
			err = cerr
		} else if !created {
			// Another upload of the same path came first.
			existing, _, err = h.storedNarInfo(ctx, req.File)
			if err == nil && existing == nil {
				err = fmt.Errorf("%s vanished while it was uploaded", req.File)
			}
		}
		if err != nil {
			return nil, storage.Info{}, false, err
		}
	}
	if existing != nil {
		if err := sameNar(existing, info); err != nil {
			return nil, storage.Info{}, false, err
		}
		info = existing
		// Pushed again: wanted again, also after the index is lost.
		h.state.MarkServed(req.Hash)
	}
	file, err := h.store.Stat(ctx, req.File)
	if err != nil {
		return nil, storage.Info{}, false, err
	}
	touched := []string{req.Hash, info.URL}
	for _, ref := range info.References {
		touched = append(touched, ref[:cacheurl.HashLen])
	}
	h.state.Touch(touched...)
	return info, file, existing != nil, nil
}

// storedNarInfo returns the narinfo the cache holds under name, or nil;
// replaceable says a file is there that cannot be served, which is no
// valid path and may be replaced.
func (h *Handler) storedNarInfo(ctx context.Context, name string) (info *narinfo.NarInfo, replaceable bool, err error) {
	data, err := storage.ReadAll(ctx, h.store, name, nixfmt.MaxNarInfoSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading the stored %s: %w", name, err)
	}
	info, err = nixfmt.Admit(data, h.StoreDir, strings.TrimSuffix(name, ".narinfo"))
	if err != nil {
		return nil, true, nil
	}
	return info, false, nil
}

// sameNar accepts an upload of a path the cache holds only when it
// describes the same NAR; the stored narinfo stays as it is. Uploads never
// replace a path, as Nix's own stores never replace a valid path.
func sameNar(existing, upload *narinfo.NarInfo) error {
	if !bytes.Equal(existing.NarHash.Digest(), upload.NarHash.Digest()) || existing.NarSize != upload.NarSize {
		return reject(http.StatusConflict, "path_exists", "the cache already holds %s with NarHash %s and NarSize %d, and never replaces it with another NAR",
			existing.StorePath, existing.NarHash, existing.NarSize)
	}
	return nil
}

// ownKeyName reports whether name is the name of one of the cache's keys.
func (h *Handler) ownKeyName(name string) bool {
	for _, key := range h.keys {
		if key.ToPublicKey().Name == name {
			return true
		}
	}
	return false
}

// admitNarInfo applies the cache's one narinfo rule, nixfmt.Admit, to an
// upload.
func (h *Handler) admitNarInfo(data []byte, hash string) (*narinfo.NarInfo, error) {
	info, err := nixfmt.Admit(data, h.StoreDir, hash)
	var refused *nixfmt.AdmitError
	if errors.As(err, &refused) {
		return nil, reject(http.StatusBadRequest, refused.Reason, "%v", refused)
	}
	return info, err
}

// checkNarInfoNar checks the narinfo against the stored NAR it names.
func (h *Handler) checkNarInfoNar(ctx context.Context, info *narinfo.NarInfo) error {
	meta, err := h.narMetaOf(ctx, info.URL)
	if errors.Is(err, fs.ErrNotExist) {
		return reject(http.StatusBadRequest, "missing_nar", "the NAR %s has not been uploaded: upload it before its narinfo", info.URL)
	}
	if err != nil {
		return err
	}
	return meta.matches(info)
}

// matches checks a narinfo's hashes and sizes against a NAR's.
func (meta narMeta) matches(info *narinfo.NarInfo) error {
	switch {
	case info.FileHash != nil && !bytes.Equal(info.FileHash.Digest(), meta.fileHash[:]):
		return reject(http.StatusBadRequest, "file_hash_mismatch", "FileHash %s does not match the NAR's sha256:%s", info.FileHash, nixbase32.EncodeToString(meta.fileHash[:]))
	case info.FileSize != 0 && int64(info.FileSize) != meta.fileSize:
		return reject(http.StatusBadRequest, "file_size_mismatch", "FileSize %d does not match the NAR's %d bytes", info.FileSize, meta.fileSize)
	case !bytes.Equal(info.NarHash.Digest(), meta.narHash[:]):
		return reject(http.StatusBadRequest, "nar_hash_mismatch", "NarHash %s does not match the NAR's sha256:%s", info.NarHash, nixbase32.EncodeToString(meta.narHash[:]))
	case int64(info.NarSize) != meta.narSize:
		return reject(http.StatusBadRequest, "nar_size_mismatch", "NarSize %d does not match the NAR's %d bytes", info.NarSize, meta.narSize)
	}
	return nil
}

// narMetaOf returns the hashes of a stored NAR: from the upload that stored
// it, or, after a restart, by reading it again.
func (h *Handler) narMetaOf(ctx context.Context, url string) (narMeta, error) {
	if meta, ok := h.pending.get(url); ok {
		if _, err := h.store.Stat(ctx, url); err == nil {
			return meta, nil
		}
	}
	f, _, err := h.store.Open(ctx, url)
	if err != nil {
		return narMeta{}, err
	}
	defer func() { _ = f.Close() }()
	compression, _ := nixfmt.NarCompression(url)
	meta, err := receiveNar(io.Discard, f, compression, math.MaxInt64-1, -1)
	if err != nil {
		var uerr *uploadError
		if errors.As(err, &uerr) {
			return narMeta{}, reject(http.StatusBadRequest, "bad_nar", "the stored NAR %s is unreadable: %v", url, uerr.msg)
		}
		return narMeta{}, err
	}
	h.pending.put(url, meta)
	return meta, nil
}

// putCacheInfo accepts nix-cache-info when it agrees with the configuration:
// the served one is generated, but nix creates it when a cache looks new.
func (h *Handler) putCacheInfo(r *http.Request) error {
	data, err := h.readSmallBody(r, maxSmallDocSize)
	if err != nil {
		return err
	}
	if dir := storedStoreDir(data); dir != "" && dir != h.StoreDir {
		return reject(http.StatusBadRequest, "store_dir_mismatch", "StoreDir %s is not this cache's %s", dir, h.StoreDir)
	}
	return h.ensureCacheInfoFile(r.Context())
}

// putDocument stores a listing, realisation or build log. The body is
// streamed to a temporary file, however well it compresses, so a small
// request can never make the cache hold much in memory; a JSON document is
// then checked within jsonCheckMemory.
func (h *Handler) putDocument(r *http.Request, name string, limit int64, isJSON bool) error {
	body, release, err := decodedBody(r, limit)
	if err != nil {
		return err
	}
	defer release()
	up, err := h.store.Create(r.Context(), name)
	if err != nil {
		return err
	}
	defer up.Abort()
	n, err := io.Copy(up, io.LimitReader(body, limit+1))
	if err != nil {
		return reject(http.StatusBadRequest, "bad_body", "reading the body: %v", err)
	}
	if n > limit {
		return reject(http.StatusRequestEntityTooLarge, "too_large", "%s is larger than %d bytes once decoded", name, limit)
	}
	uploadBytes.WithLabelValues(strings.SplitN(name, "/", 2)[0]).Add(float64(n))
	if isJSON {
		if err := checkJSON(r.Context(), up, n); err != nil {
			return reject(http.StatusBadRequest, "bad_json", "%s is not valid JSON: %v", name, err)
		}
	}
	return up.Commit()
}

// checkJSON checks that the size bytes of f are one JSON document, holding
// them in memory only within jsonCheckMemory.
func checkJSON(ctx context.Context, f io.ReaderAt, size int64) error {
	if err := jsonCheckMemory.Acquire(ctx, max(size, 1)); err != nil {
		return err
	}
	defer jsonCheckMemory.Release(max(size, 1))
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if !json.Valid(data) {
		return errors.New("it does not parse")
	}
	return nil
}

// decodedBody is a request body of at most limit bytes as sent, with its
// Content-Encoding undone; the caller bounds what it reads of the result.
func decodedBody(r *http.Request, limit int64) (io.Reader, func(), error) {
	if r.ContentLength > limit {
		return nil, nil, reject(http.StatusRequestEntityTooLarge, "too_large", "body of %d bytes is larger than %d bytes", r.ContentLength, limit)
	}
	body, release, err := nixfmt.ContentDecoder(r.Header.Get("Content-Encoding"), r.Body)
	if err != nil {
		return nil, nil, reject(http.StatusBadRequest, "bad_encoding", "%v", err)
	}
	return body, release, nil
}

// readSmallBody reads a whole request body of at most limit bytes, undoing
// its Content-Encoding.
func (h *Handler) readSmallBody(r *http.Request, limit int64) ([]byte, error) {
	body, release, err := decodedBody(r, limit)
	if err != nil {
		return nil, err
	}
	defer release()
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, reject(http.StatusBadRequest, "bad_body", "reading the body: %v", err)
	}
	if int64(len(data)) > limit {
		return nil, reject(http.StatusRequestEntityTooLarge, "too_large", "body is larger than %d bytes", limit)
	}
	return data, nil
}

// writeFile atomically replaces name with data.
func (h *Handler) writeFile(ctx context.Context, name string, data []byte) error {
	if err := storage.WriteAll(ctx, h.store, name, data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}

// createFile writes name with data unless it exists, and reports whether
// it did.
func (h *Handler) createFile(ctx context.Context, name string, data []byte) (bool, error) {
	up, err := h.store.Create(ctx, name)
	if err != nil {
		return false, err
	}
	defer up.Abort()
	if _, err := up.Write(data); err != nil {
		return false, fmt.Errorf("writing %s: %w", name, err)
	}
	return up.CommitNew()
}

// ensureCacheInfoFile writes nix-cache-info into the root when it is
// missing, so that the directory stays a complete file:// cache that `nix
// copy --from file://` can read.
func (h *Handler) ensureCacheInfoFile(ctx context.Context) error {
	if _, err := h.store.Stat(ctx, "nix-cache-info"); err == nil {
		return nil
	}
	return h.writeFile(ctx, "nix-cache-info", []byte("StoreDir: "+h.StoreDir+"\n"))
}

// maxPendingNars bounds the hashes kept for NARs whose narinfo has not come
// yet; beyond it, a NAR is read again when its narinfo arrives.
const maxPendingNars = 100000

// pendingNars remembers what uploaded NARs hold until their narinfo comes.
type pendingNars struct {
	mu   sync.Mutex
	nars map[string]narMeta
}

func (p *pendingNars) put(url string, meta narMeta) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nars == nil {
		p.nars = make(map[string]narMeta)
	}
	if len(p.nars) >= maxPendingNars {
		for old := range p.nars {
			delete(p.nars, old)
			break
		}
	}
	p.nars[url] = meta
}

func (p *pendingNars) get(url string) (narMeta, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	meta, ok := p.nars[url]
	return meta, ok
}

func (p *pendingNars) delete(url string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.nars, url)
}
