package caddynix

import (
	"net/http"
	"strconv"
	"strings"
)

// dropEmptySuffixRanges removes the ranges `-0` from a request's Range
// header before http.ServeContent sees it, and reports false, having
// answered 416, when nothing else is asked for. A suffix of no bytes can
// be satisfied by no representation (RFC 9110, 14.1.3), but ServeContent
// takes it for an empty range at the end and answers 206 with a
// Content-Range that names no bytes, which clients reject.
func dropEmptySuffixRanges(w http.ResponseWriter, r *http.Request, size int64) bool {
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
