package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// spliceChunk is how much of a spliced object one write to the client may
// cover. Caddy's write idle timeout applies per write, and its default of
// 64 KiB costs a flush and a new deadline for every 64 KiB; 2 MiB is
// nginx's sendfile_max_chunk, and keeps the timeout meaningful for a slow
// client.
const spliceChunk = 2 << 20

// spliceable reports whether the object a request asks for is worth
// reading off a connection of its own: a plain HTTP/1 GET of a whole
// object, whose client connection Go can splice into.
func spliceable(r *http.Request) bool {
	return r.ProtoMajor == 1 && r.TLS == nil && r.Method == http.MethodGet && r.Header.Get("Range") == ""
}

// spliceWriter hands the connection an object's bytes come on (an S3
// object read on a connection of its own) down to the client's, so that
// the kernel moves the bytes from one to the other (splice(2)) rather
// than Go copying them twice through user space.
//
// Caddy's write idle timeout wraps what it is given in a LimitedReader of
// its own for every write, and Go splices through one LimitedReader only,
// so the bare connection goes down. It ends where the response does: the
// object's GET asked for exactly the bytes to send, with Connection:
// close. A stream cut short is resumed from the byte it reached, as the
// object's Read does.
type spliceWriter struct {
	*streamWriter
	ctx context.Context
	obj storage.ConnReader
	// content is the reader of obj that http.ServeContent copies.
	content io.Reader
	// failed is told of a storage failure.
	failed func()
}

func newSpliceWriter(w http.ResponseWriter, r *http.Request, obj storage.ConnReader, content io.Reader, failed func()) *spliceWriter {
	return &spliceWriter{streamWriter: newStreamWriter(w, r), ctx: r.Context(), obj: obj, content: content, failed: failed}
}

// ReadFrom passes the object's connections on when r reads the object.
func (w *spliceWriter) ReadFrom(r io.Reader) (int64, error) {
	lr, ok := r.(*io.LimitedReader)
	if !ok || lr.R != w.content {
		return w.streamWriter.ReadFrom(r)
	}
	if _, idle := caddyhttp.IdleTimeoutsFromContext(w.ctx); idle != nil {
		defer idle.Override(idle.Deadline.Timeout, idle.Deadline.MinRate, spliceChunk)()
	}
	var total int64
	for lr.N > 0 {
		read, conn, err := w.obj.ReadConn(lr.N)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				w.failed()
			}
			return total, err
		}
		if conn == nil {
			n, err := w.streamWriter.ReadFrom(lr)
			return total + n, err
		}
		n, err := w.pass(read, conn)
		_ = conn.Close()
		total += n
		lr.N -= n
		if lr.N < 0 {
			w.failed()
			return total, fmt.Errorf("the storage sent %d bytes more than the object holds", -lr.N)
		}
		if _, err := w.obj.Seek(n, io.SeekCurrent); err != nil {
			return total, err
		}
		if err != nil && (w.ctx.Err() != nil || errors.Is(err, syscall.EPIPE)) {
			return total, err // the client is gone
		}
		// Otherwise the connection to the storage was cut, or ended
		// early: the next ReadConn asks again from here.
	}
	return total, nil
}

// pass writes the bytes already read off conn, then hands conn down.
func (w *spliceWriter) pass(read []byte, conn *net.TCPConn) (int64, error) {
	written, err := w.Write(read)
	if err != nil {
		return int64(written), err
	}
	n, err := w.ResponseWriterWrapper.ReadFrom(conn)
	return int64(written) + n, err
}

// Interface guard
var _ io.ReaderFrom = (*spliceWriter)(nil)
