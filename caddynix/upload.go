package caddynix

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/serve"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
)

// serveUpload handles PUT. Every upload is authenticated; nothing is visible
// until it has been checked and renamed into place.
func (h *Handler) serveUpload(w http.ResponseWriter, r *http.Request, req cacheurl.Request, ok bool) error {
	kind := metrics.OtherKind
	if ok {
		kind = req.Kind.String()
	}
	body := &trackedBody{ReadCloser: r.Body}
	r.Body = body
	err := h.receive(r, req, ok)
	clientErr := body.err
	if !body.eof && r.ProtoMajor == 1 && r.ContentLength != 0 {
		finishUnreadBody(w, r, body)
	}
	var uerr *upload.Error
	switch {
	case err == nil:
		metrics.UploadEnded(kind, "stored", "")
		w.WriteHeader(http.StatusCreated)
		return nil
	case clientErr != nil:
		// The client went away or stopped sending: not the server's fault.
		metrics.UploadEnded(kind, "aborted", "")
		h.logger.Info("upload aborted by the client", zap.String("path", r.URL.Path), zap.NamedError("reason", clientErr))
		http.Error(w, "the upload's body ended early", http.StatusBadRequest)
		return nil
	case errors.As(err, &uerr):
		metrics.UploadEnded(kind, "rejected", uerr.Reason)
		if uerr.Status >= http.StatusInternalServerError {
			h.logger.Error("upload refused", zap.String("path", r.URL.Path), zap.String("reason", uerr.Msg))
		} else {
			h.logger.Info("upload rejected", zap.String("path", r.URL.Path), zap.String("reason", uerr.Msg))
		}
		if uerr.Status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Basic realm="nix cache upload"`)
		}
		if uerr.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(uerr.RetryAfter.Round(time.Second)/time.Second)))
		}
		http.Error(w, uerr.Msg, uerr.Status)
		return nil
	default:
		metrics.UploadEnded(kind, "failed", "")
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

// receive authenticates an upload and hands it to the receiver of the
// credential's tier.
func (h *Handler) receive(r *http.Request, req cacheurl.Request, ok bool) error {
	token, present := requestToken(r)
	who, allowed := h.identify(token)
	if !present || !allowed {
		return upload.Reject(http.StatusUnauthorized, "unauthorized", "uploads need a valid token (Basic password from a netrc file, or Bearer)")
	}
	if !ok {
		return upload.Reject(http.StatusBadRequest, "bad_path", "%s is not a binary cache path", r.URL.Path)
	}
	receiver := h.receiver
	if who.overlay != nil {
		receiver = h.receiver.ForOverlay(*who.overlay, h.overlayKey)
	}
	body := upload.Body{Reader: r.Body, Length: r.ContentLength, Encoding: r.Header.Get("Content-Encoding")}
	var sent *bytes.Buffer
	if req.Kind == cacheurl.NarInfo {
		// A narinfo is small (the receiver refuses a larger one): what
		// it read is what it stored.
		sent = new(bytes.Buffer)
		body.Reader = io.TeeReader(io.LimitReader(r.Body, nixfmt.MaxNarInfoSize+1), sent)
	}
	if err := receiver.Put(r.Context(), req, body, who.pusher); err != nil {
		return err
	}
	if sent != nil {
		if info, err := narinfo.Parse(sent); err == nil {
			if who.stored != nil {
				who.stored.add(info.StorePath, int64(info.NarSize))
			}
			h.notePush(who.pusher, who.overlay, int64(info.NarSize))
		}
	}
	return nil
}

// identity is who presents an upload credential, and where their pushes
// go.
type identity struct {
	pusher *index.Pusher
	// overlay is the overlay they push into and read beside the cache
	// proper; nil for the trusted tier.
	overlay *overlay.Key
	// stored tallies what a job credential stores; nil for other
	// credentials.
	stored *pushTally
}

// identify returns who presents token: a configured upload token or a
// live credential a runner issued to a job.
func (h *Handler) identify(token string) (identity, bool) {
	if name, key, ok := h.creds.allows(token); ok {
		return identity{pusher: &index.Pusher{Token: name}, overlay: key}, true
	}
	if h.shared == nil {
		return identity{}, false
	}
	cred, ok := h.shared.allows(token)
	if !ok {
		return identity{}, false
	}
	if cred.job == nil {
		return identity{pusher: &index.Pusher{Token: "job credential"}, overlay: cred.overlay, stored: cred.stored}, true
	}
	return identity{pusher: &index.Pusher{Job: cred.job}, overlay: cred.overlay, stored: cred.stored}, true
}

// requestOverlay is what serves the overlay of the credential a request
// carries, if any: Nix sends its netrc's credentials on every request, so
// a job of the ref tier substitutes its own pushes with nothing more to
// configure. Nobody else is ever served an overlay.
func (h *Handler) requestOverlay(r *http.Request) *serve.Cache {
	if h.Upload == nil {
		return nil
	}
	token, present := requestToken(r)
	if !present {
		return nil
	}
	who, ok := h.identify(token)
	if !ok || who.overlay == nil {
		return nil
	}
	var keys []signature.SecretKey
	if h.overlayKey != nil {
		keys = append(keys, *h.overlayKey)
	}
	return h.cache.Overlay(overlay.Store(h.store, who.overlay.ID()), keys)
}
