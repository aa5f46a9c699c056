package serve

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
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
// little; 144 bytes short of 256 KiB, so that over HTTP/2 a full piece of
// a file is 16 full frames, none of them cut in two by the remainder of
// the piece before.
const streamCopyBufferSize = 16 * httpx.HTTP2RecordWrite

// streamWriter copies a body to the client in pieces of about 256 KiB rather than
// io.Copy's 32 KiB, which on a NAR proxied from S3 costs a write system
// call per 32 KiB, and over HTTP/2 a wait for the connection's writer.
type streamWriter struct {
	*caddyhttp.ResponseWriterWrapper
	// req is the request the body answers.
	req *http.Request
}

// newStreamWriter copies to w, the answer to r, in full TLS records over
// HTTP/2 (httpx.RecordSized).
func newStreamWriter(w http.ResponseWriter, r *http.Request) *streamWriter {
	return &streamWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, req: r}
}

func (w *streamWriter) ReadFrom(r io.Reader) (int64, error) {
	// Written through Write, so that the copy is not handed back here.
	dst, done := httpx.RecordSized(struct{ io.Writer }{w.ResponseWriterWrapper}, w.req)
	defer done()
	buf := streamCopyBuffers.Get().(*[]byte)
	defer streamCopyBuffers.Put(buf)
	return io.CopyBuffer(dst, r, *buf)
}

// Memory answers with body, held in memory, as http.ServeContent does
// (ranges, conditional requests), in one write with its header.
func Memory(w http.ResponseWriter, r *http.Request, modTime time.Time, body []byte) {
	http.ServeContent(memoryBodyWriter{w}, r, "", modTime, bytes.NewReader(body))
}
