package httpx

import (
	"io"
	"net/http"
)

// http2RecordWrite is how much of a body one write hands Go's HTTP/2
// server over TLS: a DATA frame's payload whose frame, with its 9-byte
// header, fills one TLS record of 16 KiB. Go cuts a larger write into
// frames of the client's largest frame size, 16 KiB for curl and so for
// Nix; each is 9 bytes over a record, and goes out as two records in two
// write(2)s, a full one and one of 9 bytes.
const http2RecordWrite = 16<<10 - 9

// RecordSized returns w, the body of the answer to r, or over HTTP/2 with
// TLS a writer that hands w at most a TLS record's DATA frame per write,
// so that a body goes out in full records.
func RecordSized(w io.Writer, r *http.Request) io.Writer {
	if r.ProtoMajor == 2 && r.TLS != nil {
		return cutWriter{w: w, most: http2RecordWrite}
	}
	return w
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
