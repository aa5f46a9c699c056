package caddyutil

import (
	"io"
	"net/http"
	"os"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// SendfileWriter lets the kernel send a whole file to an HTTP/1.x client.
//
// http.ServeContent copies a file as an io.LimitedReader around the
// *os.File, and Caddy's write idle timeout (on by default) wraps whatever it
// is given in a LimitedReader of its own, one chunk at a time. Go only uses
// sendfile(2) for a single LimitedReader around a file, so without this
// writer a file goes through user space in 32 KiB reads and writes. When
// the limit ends exactly at the end of the file, which is the case for
// every response that is not a byte range, the file itself is handed on.
// The file must not grow while it is sent.
type SendfileWriter struct {
	*caddyhttp.ResponseWriterWrapper
	file *os.File
	size int64 // the file's, as stat'ed when it was opened
}

// NewSendfileWriter returns a writer that sends f, of size bytes, through w.
func NewSendfileWriter(w http.ResponseWriter, f *os.File, size int64) *SendfileWriter {
	return &SendfileWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, file: f, size: size}
}

// ReadFrom hands the file itself on when r reads it to its end.
func (w *SendfileWriter) ReadFrom(r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok && lr.R == w.file && w.remaining() == lr.N {
		n, err := w.ResponseWriterWrapper.ReadFrom(w.file)
		lr.N -= n
		return n, err
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// remaining is how many bytes are left between the file's offset and its
// end, or -1 if that cannot be told.
func (w *SendfileWriter) remaining() int64 {
	offset, err := w.file.Seek(0, io.SeekCurrent)
	if err != nil {
		return -1
	}
	return w.size - offset
}

// Interface guard
var _ io.ReaderFrom = (*SendfileWriter)(nil)
