package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"time"

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

// BypassedWriter is a response writer that a spliced body may pass below,
// straight to the writer beneath it, which is told how many bytes did.
type BypassedWriter interface {
	http.ResponseWriter
	Unwrap() http.ResponseWriter
	Bypassed(n int64)
}

// exactSplice is where the bytes of a part on a connection kept open go
// (storage.ConnPart.Ends false), which must be spliced in exact lengths:
// the writer beneath Caddy's write idle timeout, which would wrap what it
// is given in a LimitedReader of its own that Go does not splice through,
// with the writers passed on the way told of the bytes.
type exactSplice struct {
	below io.ReaderFrom
	// idle is Caddy's write idle timeout, whose deadline the splice sets
	// itself; nil when the server has none, and below is the writer
	// itself.
	idle     *caddyhttp.IdleTimeoutWriter
	bypassed []BypassedWriter
}

// exactSpliceTo finds where w, the answer to r, can splice exact lengths:
// below Caddy's write idle timeout, when every writer between lets the
// bytes pass below it (BypassedWriter) or only wraps. Any other writer on
// the way (an access log's recorder, an encoder) may need to see the
// bytes, and then there is none.
func exactSpliceTo(w http.ResponseWriter, r *http.Request) *exactSplice {
	_, idle := caddyhttp.IdleTimeoutsFromContext(r.Context())
	if idle == nil {
		return &exactSplice{below: asReaderFrom(w)}
	}
	var bypassed []BypassedWriter
	for {
		switch wrapper := w.(type) {
		case *caddyhttp.IdleTimeoutWriter:
			if wrapper != idle {
				return nil
			}
			below, ok := wrapper.ResponseWriter.(io.ReaderFrom)
			if !ok {
				return nil
			}
			return &exactSplice{below: below, idle: idle, bypassed: bypassed}
		case *caddyhttp.ResponseWriterWrapper:
			w = wrapper.ResponseWriter
		case BypassedWriter:
			bypassed = append(bypassed, wrapper)
			w = wrapper.Unwrap()
		default:
			return nil
		}
	}
}

// asReaderFrom is w as an io.ReaderFrom, which reaches the client's
// connection through w's wrappers.
func asReaderFrom(w http.ResponseWriter) io.ReaderFrom {
	if rf, ok := w.(io.ReaderFrom); ok {
		return rf
	}
	return &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}
}

// splice moves exactly src.N bytes into the client's connection, in pieces
// of spliceChunk under the write idle timeout's deadline for each, as the
// timeout itself would set it, counting moved bytes from moved on.
func (e *exactSplice) splice(src *io.LimitedReader, moved int64) (int64, error) {
	var total int64
	for src.N > 0 {
		piece := &io.LimitedReader{R: src.R, N: min(src.N, spliceChunk)}
		if e.idle != nil {
			// As Caddy's own writer, where no deadline can be set none
			// is in force, and the bytes go on without.
			_ = e.idle.Ctrl.SetWriteDeadline(e.deadline(moved + total))
		}
		n, err := e.below.ReadFrom(piece)
		total += n
		src.N -= n
		for _, w := range e.bypassed {
			w.Bypassed(n)
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, io.ErrUnexpectedEOF
		}
	}
	return total, nil
}

// deadline is the write idle timeout's next deadline once moved bytes
// went out since its settings were last overridden, as
// caddyhttp.IdleDeadline computes it.
func (e *exactSplice) deadline(moved int64) time.Time {
	d := e.idle.Deadline
	deadline := time.Now().Add(d.Timeout)
	if d.MinRate > 0 {
		deadline = d.Start.Add(d.Timeout + time.Duration(moved)*time.Second/time.Duration(d.MinRate))
	}
	if !d.HardDeadline.IsZero() && deadline.After(d.HardDeadline) {
		deadline = d.HardDeadline
	}
	return deadline
}

// spliceWriter hands the connection an object's bytes come on (an S3
// object read on a connection of its own) down to the client's, so that
// the kernel moves the bytes from one to the other (splice(2)) rather
// than Go copying them twice through user space.
//
// A connection that ends with the part goes down bare, through every
// writer: Caddy's write idle timeout wraps what it is given in a
// LimitedReader of its own for every write, and Go splices through one
// LimitedReader only. A connection kept open after the part is spliced
// in exact lengths below the idle timeout (exactSplice). A stream cut
// short is resumed from the byte it reached, as the object's Read does.
type spliceWriter struct {
	*streamWriter
	ctx context.Context
	obj storage.ConnReader
	// content is the reader of obj that http.ServeContent copies.
	content io.Reader
	// exact is where parts on connections kept open go; nil when there
	// is no such place, and the object was opened for parts that end
	// with their connections.
	exact *exactSplice
	// failed is told of a storage failure.
	failed func()
}

func newSpliceWriter(w http.ResponseWriter, r *http.Request, obj storage.ConnReader, content io.Reader, exact *exactSplice, failed func()) *spliceWriter {
	return &spliceWriter{streamWriter: newStreamWriter(w, r), ctx: r.Context(), obj: obj, content: content, exact: exact, failed: failed}
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
		part, err := w.obj.ReadConn(lr.N)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				w.failed()
			}
			return total, err
		}
		if part == nil {
			n, err := w.streamWriter.ReadFrom(lr)
			return total + n, err
		}
		n, err := w.pass(part, total)
		part.Done(err == nil && n == int64(len(part.Read))+part.Rest)
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

// pass writes the bytes of part already read off its connection, then
// hands the connection down; moved bytes went before it.
func (w *spliceWriter) pass(part *storage.ConnPart, moved int64) (int64, error) {
	written, err := w.Write(part.Read)
	if err != nil {
		return int64(written), err
	}
	var n int64
	switch src := part.Source().(type) {
	case *io.LimitedReader:
		if w.exact == nil {
			return int64(written), errors.New("the storage kept a connection open that the response cannot splice exactly")
		}
		n, err = w.exact.splice(src, moved+int64(written))
	default:
		n, err = w.ResponseWriterWrapper.ReadFrom(src)
	}
	return int64(written) + n, err
}

// Interface guard
var _ io.ReaderFrom = (*spliceWriter)(nil)
