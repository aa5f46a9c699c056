// Package httpx holds what the cache's HTTP answers share beyond
// net/http: ranges that http.ServeContent gets wrong, telling a plain GET,
// the status an answer ends with, and cutting a response whose header is
// already out. It knows net/http only: nothing of Caddy or of caches.
package httpx

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DropEmptySuffixRanges removes the ranges `-0` from a request's Range
// header before http.ServeContent sees it, and reports false, having
// answered 416, when nothing else is asked for. A suffix of no bytes can
// be satisfied by no representation (RFC 9110, 14.1.3), but ServeContent
// takes it for an empty range at the end and answers 206 with a
// Content-Range that names no bytes, which clients reject.
func DropEmptySuffixRanges(w http.ResponseWriter, r *http.Request, size int64) bool {
	spec, ok := strings.CutPrefix(r.Header.Get("Range"), "bytes=")
	if !ok {
		return true
	}
	var kept []string
	dropped := false
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if suffix, ok := strings.CutPrefix(part, "-"); ok {
			if n, err := strconv.ParseUint(suffix, 10, 64); err == nil && n == 0 {
				dropped = true
				continue
			}
		}
		kept = append(kept, part)
	}
	if !dropped {
		return true
	}
	if len(kept) == 0 {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		http.Error(w, "requested range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return false
	}
	r.Header.Set("Range", "bytes="+strings.Join(kept, ","))
	return true
}

// PlainGet reports whether a GET or HEAD asks for the whole representation
// unconditionally: no Range and no precondition.
func PlainGet(r *http.Request) bool {
	h := r.Header
	return h.Get("Range") == "" && h.Get("If-Match") == "" && h.Get("If-None-Match") == "" &&
		h.Get("If-Modified-Since") == "" && h.Get("If-Unmodified-Since") == "" && h.Get("If-Range") == ""
}

// LastModified is t as http.ServeContent sends it in Last-Modified: empty
// for a time it would not send (the zero time or the Unix epoch).
func LastModified(t time.Time) string {
	if t.IsZero() || t.Equal(time.Unix(0, 0)) {
		return ""
	}
	return t.UTC().Format(http.TimeFormat)
}

// WritePlainHeader answers a plain GET or HEAD (PlainGet) of a whole
// representation of size bytes with the header http.ServeContent would
// send, without ServeContent's checks of headers the request does not
// have or its seeks to learn a size the caller knows. It is no answer for
// a representation with a Content-Encoding, whose length ServeContent
// leaves out.
func WritePlainHeader(w http.ResponseWriter, lastModified string, size int64) {
	header := w.Header()
	if lastModified != "" {
		header.Set("Last-Modified", lastModified)
	}
	header.Set("Accept-Ranges", "bytes")
	header.Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
}

// Aborted is a response that failed after its header was sent: the
// handler cuts the connection, so that the client cannot take what it got
// for a whole body, even one sent without a Content-Length.
type Aborted struct{ Err error }

func (a Aborted) Error() string { return a.Err.Error() }
func (a Aborted) Unwrap() error { return a.Err }
