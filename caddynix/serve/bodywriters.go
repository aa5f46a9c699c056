package serve

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// memoryBodyWriter hides io.ReaderFrom from http.ServeContent, so that a
// body already in memory (a signed narinfo, nix-cache-info) is buffered and
// goes out with the response header in one write, instead of the header
// being flushed on its own ahead of a copy loop.
type memoryBodyWriter struct {
	http.ResponseWriter
}

// Unwrap lets http.ResponseController reach the connection.
func (w memoryBodyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// streamCopyBuffers are the buffers objects are copied to clients through
// where the kernel cannot send them: an S3 object's body, or any object
// over HTTP/2.
var streamCopyBuffers = sync.Pool{New: func() any { b := make([]byte, streamCopyBufferSize); return &b }}

// streamCopyBufferSize: large enough that a NAR streamed from S3 is written
// in few system calls, small enough that many downloads at once hold
// little.
const streamCopyBufferSize = 256 << 10

// http2RecordWrite is how much of a body one write hands Go's HTTP/2
// server over TLS: a DATA frame's payload whose frame, with its 9-byte
// header, fills one TLS record of 16 KiB. Go cuts a larger write into
// frames of the client's largest frame size, 16 KiB for curl and so for
// Nix; each is 9 bytes over a record, and goes out as two records in two
// write(2)s, a full one and one of 9 bytes.
const http2RecordWrite = 16<<10 - 9

// streamWriter copies a body to the client in 256 KiB pieces rather than
// io.Copy's 32 KiB, which on a NAR proxied from S3 costs a write system
// call per 32 KiB, and over HTTP/2 a wait for the connection's writer.
type streamWriter struct {
	*caddyhttp.ResponseWriterWrapper
	// write is the most one write hands on; 0 for a whole piece.
	write int
}

func newStreamWriter(w http.ResponseWriter) *streamWriter {
	return &streamWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
}

// newStreamWriterFor is newStreamWriter for r's connection: over HTTP/2
// with TLS, the pieces are written a TLS record's frame at a time.
func newStreamWriterFor(w http.ResponseWriter, r *http.Request) *streamWriter {
	sw := newStreamWriter(w)
	if r.ProtoMajor == 2 && r.TLS != nil {
		sw.write = http2RecordWrite
	}
	return sw
}

func (w *streamWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := streamCopyBuffers.Get().(*[]byte)
	defer streamCopyBuffers.Put(buf)
	// Written through Write, so that the copy is not handed back here.
	var dst io.Writer = struct{ io.Writer }{w.ResponseWriterWrapper}
	if w.write > 0 {
		dst = cutWriter{w: w.ResponseWriterWrapper, most: w.write}
	}
	return io.CopyBuffer(dst, r, *buf)
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

// Memory answers with body, held in memory, as http.ServeContent does
// (ranges, conditional requests), in one write with its header.
func Memory(w http.ResponseWriter, r *http.Request, modTime time.Time, body []byte) {
	http.ServeContent(memoryBodyWriter{w}, r, "", modTime, bytes.NewReader(body))
}
