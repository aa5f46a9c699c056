package serve

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// sendfileWriter lets the kernel send a whole file to the client.
//
// http.ServeContent copies a file as an io.LimitedReader around the
// *os.File, and Caddy's write idle timeout (on by default) wraps whatever it
// is given in a LimitedReader of its own, one chunk at a time. Go only uses
// sendfile(2) for a single LimitedReader around a file, so without this
// writer every NAR would go through user space in 32 KiB reads and writes.
// When the limit ends exactly at the end of the file, which is the case for
// every response that is not a byte range, the file itself is handed on.
type sendfileWriter struct {
	*caddyhttp.ResponseWriterWrapper
	file *os.File
	size int64 // the file's, as stat'ed when it was opened
}

func newSendfileWriter(w http.ResponseWriter, f *os.File, size int64) *sendfileWriter {
	return &sendfileWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, file: f, size: size}
}

func (w *sendfileWriter) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok && lr.R == w.file && w.remaining() == lr.N {
		// Files in the cache are replaced by rename, never written in
		// place, so the file cannot grow past the limit while it is sent.
		n, err := w.ResponseWriterWrapper.ReadFrom(w.file)
		lr.N -= n
		return n, err
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// remaining is how many bytes are left between the file's offset and its
// end, or -1 if that cannot be told.
func (w *sendfileWriter) remaining() int64 {
	offset, err := w.file.Seek(0, io.SeekCurrent)
	if err != nil {
		return -1
	}
	return w.size - offset
}

// memoryBodyWriter hides io.ReaderFrom from http.ServeContent, so that a
// body already in memory (a signed narinfo, nix-cache-info) is buffered and
// goes out with the response header in one write, instead of the header
// being flushed on its own ahead of a copy loop.
type memoryBodyWriter struct {
	http.ResponseWriter
}

// Unwrap lets http.ResponseController reach the connection.
func (w memoryBodyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Interface guard
var _ io.ReaderFrom = (*sendfileWriter)(nil)

// streamCopyBuffers are the buffers objects are copied to clients through
// where the kernel cannot send them: an S3 object's body, or any object
// over HTTP/2.
var streamCopyBuffers = sync.Pool{New: func() any { b := make([]byte, streamCopyBufferSize); return &b }}

// streamCopyBufferSize: large enough that a NAR streamed from S3 is written
// in few system calls, small enough that many downloads at once hold
// little.
const streamCopyBufferSize = 256 << 10

// streamWriter copies a body to the client in 256 KiB pieces rather than
// io.Copy's 32 KiB, which on a NAR proxied from S3 costs a write system
// call per 32 KiB, and over HTTP/2 a wait for the connection's writer.
type streamWriter struct {
	*caddyhttp.ResponseWriterWrapper
}

func newStreamWriter(w http.ResponseWriter) *streamWriter {
	return &streamWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
}

func (w *streamWriter) ReadFrom(r io.Reader) (int64, error) {
	buf := streamCopyBuffers.Get().(*[]byte)
	defer streamCopyBuffers.Put(buf)
	// Written through Write, so that the copy is not handed back here.
	return io.CopyBuffer(struct{ io.Writer }{w.ResponseWriterWrapper}, r, *buf)
}

// Memory answers with body, held in memory, as http.ServeContent does
// (ranges, conditional requests), in one write with its header.
func Memory(w http.ResponseWriter, r *http.Request, modTime time.Time, body []byte) {
	http.ServeContent(memoryBodyWriter{w}, r, "", modTime, bytes.NewReader(body))
}
