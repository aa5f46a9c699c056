package httpx

import (
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// HTTP2RecordWrite is how much of a body one write hands Go's HTTP/2
// server over TLS: a DATA frame's payload whose frame, with its 9-byte
// header, fills one TLS record of 16 KiB. Go cuts a larger write into
// frames of the client's largest frame size, 16 KiB for curl and so for
// Nix; each is 9 bytes over a record, and goes out as two records in two
// write(2)s, a full one and one of 9 bytes.
const HTTP2RecordWrite = 16<<10 - 9

// RecordSized returns w, the body of the answer to r, or over HTTP/2 with
// TLS a writer whose writes reach Go's HTTP/2 server at most a TLS
// record's DATA frame at a time, so that a body goes out in full records;
// done must be called before the handler returns.
//
// Caddy's write idle timeout, where it applies, already cuts each write
// into chunks with a deadline for each, and over HTTP/2 a deadline is a
// message to the connection's goroutine: there the chunks are made
// frame-sized instead, which costs a deadline per frame where cutting
// above the timeout would cost one set and one cleared.
func RecordSized(w io.Writer, r *http.Request) (sized io.Writer, done func()) {
	if r.ProtoMajor != 2 || r.TLS == nil {
		return w, func() {}
	}
	if _, idle := caddyhttp.IdleTimeoutsFromContext(r.Context()); idle != nil {
		return w, idle.Override(idle.Deadline.Timeout, idle.Deadline.MinRate, HTTP2RecordWrite)
	}
	return cutWriter{w: w, most: HTTP2RecordWrite}, func() {}
}

// cutWriter hands what it is given to w in writes of at most most bytes.
type cutWriter struct {
	w    io.Writer
	most int
}

func (c cutWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n, err := c.w.Write(p[:min(len(p), c.most)])
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}
