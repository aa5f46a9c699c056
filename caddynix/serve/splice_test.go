package serve

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// connObject is an object whose ReadConn hands over loopback connections
// that carry its bytes, as an S3 object's does: the first few bytes as
// already read, the rest on the connection, which then ends.
type connObject struct {
	*bytes.Reader
	data     []byte
	listener net.Listener
	// cutAfter, when positive, ends the first connection after that many
	// of its bytes; extra adds bytes the object does not hold.
	cutAfter, extra int
	// stallAfter, when positive, stops the first connection after that
	// many of its bytes and keeps it open, with a read deadline set, as
	// the S3 storage's stall watch sets it.
	stallAfter int
	// keepOpen hands over parts on connections that go on after them,
	// with trailer, bytes of no part, sent after the part's.
	keepOpen bool
	trailer  []byte
	conns    int
	// done are the parts' Done verdicts.
	done []bool
}

func newConnObject(t *testing.T, data []byte) *connObject {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return &connObject{Reader: bytes.NewReader(data), data: data, listener: l}
}

func (o *connObject) Close() error { return nil }

func (o *connObject) ReadConn(n int64) (*storage.ConnPart, error) {
	off, _ := o.Seek(0, io.SeekCurrent)
	part := append([]byte(nil), o.data[off:off+n]...)
	part = append(part, bytes.Repeat([]byte("x"), o.extra)...)
	send := part
	cut := o.conns == 0 && o.cutAfter > 0
	if cut {
		send = send[:o.cutAfter]
	}
	stall := o.conns == 0 && o.stallAfter > 0
	if stall {
		send = send[:o.stallAfter]
	}
	o.conns++
	read := send[:min(len(send), 100)]
	keepOpen := o.keepOpen
	go func() {
		server, err := o.listener.Accept()
		if err != nil {
			return
		}
		_, _ = server.Write(send[len(read):])
		if keepOpen && !cut {
			_, _ = server.Write(o.trailer)
		}
		if stall || (keepOpen && !cut) {
			_, _ = io.Copy(io.Discard, server) // until the reader closes
		}
		_ = server.Close()
	}()
	conn, err := net.Dial("tcp", o.listener.Addr().String())
	if err != nil {
		return nil, err
	}
	if stall {
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	}
	return storage.NewConnPart(read, conn.(*net.TCPConn), int64(len(part)-len(read)), !keepOpen, func(whole bool) {
		o.done = append(o.done, whole)
		_ = conn.Close()
	}), nil
}

// readFromRecorder records what it is asked to ReadFrom, as the client's
// connection of net/http would be.
type readFromRecorder struct {
	*httptest.ResponseRecorder
	sources []io.Reader
	// limits are the limits of the LimitedReaders among sources, as
	// they were given.
	limits []int64
}

func (r *readFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.sources = append(r.sources, src)
	if lr, ok := src.(*io.LimitedReader); ok {
		r.limits = append(r.limits, lr.N)
	}
	return io.Copy(r.ResponseRecorder, src)
}

// checkSpliced fails the test unless every source the client's connection
// was given is one Go splices: a connection in one LimitedReader.
func (r *readFromRecorder) checkSpliced(t *testing.T) {
	t.Helper()
	for _, src := range r.sources {
		lr, ok := src.(*io.LimitedReader)
		if !ok {
			t.Fatalf("the client's connection was asked to read from a %T", src)
		}
		if _, ok := lr.R.(*net.TCPConn); !ok {
			t.Fatalf("the client's connection was asked to read from a LimitedReader around a %T, which Go cannot splice", lr.R)
		}
	}
}

// serveSpliced answers a GET of obj with a spliceWriter below Caddy's
// write idle timeout, and returns the recorder and the idle timeout's
// writer.
func serveSpliced(t *testing.T, obj *connObject) (rec *readFromRecorder, idle *caddyhttp.IdleTimeoutWriter, failed int) {
	t.Helper()
	rec = &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	idle = newIdleWriter(rec)
	r := httptest.NewRequest(http.MethodGet, "/nar/x.nar", nil)
	r = r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
	if !spliceable(r) {
		t.Fatal("a plain HTTP/1 GET is not spliceable")
	}
	idle.Header().Set("Content-Type", "application/x-nix-nar")
	http.ServeContent(newSpliceWriter(idle, r, obj, obj, exactSpliceTo(idle, r), func() { failed++ }), r, "", time.Time{}, obj)
	return rec, idle, failed
}

// TestSpliceWriterHandsTheBareConnectionDown serves an object read off
// connections: the client gets it whole, and what reaches the client's
// connection is the storage's connection itself inside one LimitedReader
// of 2 MiB, which Go splices, with Caddy's own chunk put back after.
func TestSpliceWriterHandsTheBareConnectionDown(t *testing.T) {
	data := pattern(5<<20 + 3)
	rec, idle, failed := serveSpliced(t, newConnObject(t, data))
	if !bytes.Equal(rec.Body.Bytes(), data) || failed != 0 {
		t.Fatalf("the client got %d of %d bytes, equal %v, %d failures", rec.Body.Len(), len(data), bytes.Equal(rec.Body.Bytes(), data), failed)
	}
	rec.checkSpliced(t)
	for i, limit := range rec.limits {
		if limit != spliceChunk {
			t.Fatalf("read %d of the connection was of %d bytes at most, want chunks of %d", i, limit, spliceChunk)
		}
	}
	if len(rec.limits) != 3 {
		t.Fatalf("5 MiB went in %d reads, want 3 of 2 MiB at most", len(rec.limits))
	}
	if idle.MaxChunk != caddyhttp.DefaultMaxWriteChunk {
		t.Fatalf("the write idle timeout's chunk is %d after the response, want it back at %d", idle.MaxChunk, caddyhttp.DefaultMaxWriteChunk)
	}
}

// TestSpliceWriterResumesACutConnection serves an object whose first
// connection ends early: the client still gets it whole.
func TestSpliceWriterResumesACutConnection(t *testing.T) {
	data := pattern(3 << 20)
	obj := newConnObject(t, data)
	obj.cutAfter = 1<<20 + 5
	rec, _, failed := serveSpliced(t, obj)
	if !bytes.Equal(rec.Body.Bytes(), data) || obj.conns != 2 || failed != 0 {
		t.Fatalf("the client got %d of %d bytes on %d connections, equal %v, %d failures", rec.Body.Len(), len(data), obj.conns, bytes.Equal(rec.Body.Bytes(), data), failed)
	}
}

// TestSpliceWriterResumesAStalledConnection serves an object, over a real
// HTTP/1 connection that the kernel splices into, whose first connection
// stops sending in the middle and stays open until its read deadline
// passes inside the splice: the client still gets it whole.
func TestSpliceWriterResumesAStalledConnection(t *testing.T) {
	data := pattern(3 << 20)
	obj := newConnObject(t, data)
	obj.stallAfter = 1<<20 + 5
	failed := 0
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idle := newIdleWriter(w)
		r = r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
		if !spliceable(r) {
			t.Error("a plain HTTP/1 GET is not spliceable")
		}
		http.ServeContent(newSpliceWriter(idle, r, obj, obj, exactSpliceTo(idle, r), func() { failed++ }), r, "", time.Time{}, obj)
	}))
	defer server.Close()
	resp, err := http.Get(server.URL + "/nar/x.nar")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || !bytes.Equal(got, data) || obj.conns != 2 || failed != 0 {
		t.Fatalf("the client got %d of %d bytes on %d connections, equal %v, %d failures, %v", len(got), len(data), obj.conns, bytes.Equal(got, data), failed, err)
	}
}

// TestSpliceWriterStopsAtExtraBytes serves an object whose storage sends
// more than it holds: a storage failure, not a longer answer taken for
// good.
func TestSpliceWriterStopsAtExtraBytes(t *testing.T) {
	obj := newConnObject(t, pattern(1<<20))
	obj.extra = 10
	_, _, failed := serveSpliced(t, obj)
	if failed != 1 {
		t.Fatalf("a storage that sent more than the object was %d failures, want 1", failed)
	}
}

func pattern(n int) []byte {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*31 + i/4093)
	}
	return data
}

// bypassCounter is a writer between the handler and Caddy's that lets
// spliced bytes pass below it and counts them, as the node's metrics do.
type bypassCounter struct {
	*caddyhttp.ResponseWriterWrapper
	bypassed int64
}

func (c *bypassCounter) Bypassed(n int64) { c.bypassed += n }

// newIdleWriter is Caddy's write idle timeout over w.
func newIdleWriter(w http.ResponseWriter) *caddyhttp.IdleTimeoutWriter {
	return &caddyhttp.IdleTimeoutWriter{
		ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		Ctrl:                  http.NewResponseController(w),
		Deadline:              caddyhttp.IdleDeadline{Timeout: time.Minute},
		MaxChunk:              caddyhttp.DefaultMaxWriteChunk,
		Logger:                zap.NewNop(),
	}
}

// TestSpliceWriterSplicesPartsKeptOpenExactly serves an object whose parts
// come on connections that go on after them: what reaches the client's
// connection is the storage's connection in one LimitedReader of exactly
// the part's bytes, below Caddy's idle timeout, in pieces of 2 MiB at
// most; the bytes after the part never reach the client, the writer
// passed on the way is told of the bytes, and the part is given back
// whole.
func TestSpliceWriterSplicesPartsKeptOpenExactly(t *testing.T) {
	data := pattern(5<<20 + 3)
	obj := newConnObject(t, data)
	obj.keepOpen = true
	obj.trailer = []byte("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ntrailer")
	rec := &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	idle := newIdleWriter(rec)
	counter := &bypassCounter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: idle}}
	r := httptest.NewRequest(http.MethodGet, "/nar/x.nar", nil)
	r = r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
	exact := exactSpliceTo(counter, r)
	if exact == nil {
		t.Fatal("no exact splice below Caddy's idle timeout past a writer that lets bytes pass")
	}
	counter.Header().Set("Content-Type", "application/x-nix-nar")
	failed := 0
	http.ServeContent(newSpliceWriter(counter, r, obj, obj, exact, func() { failed++ }), r, "", time.Time{}, obj)
	if !bytes.Equal(rec.Body.Bytes(), data) || failed != 0 {
		t.Fatalf("the client got %d of %d bytes, equal %v, %d failures", rec.Body.Len(), len(data), bytes.Equal(rec.Body.Bytes(), data), failed)
	}
	rec.checkSpliced(t)
	var spliced int64
	for i, limit := range rec.limits {
		if limit > spliceChunk {
			t.Fatalf("read %d of the connection was of up to %d bytes, more than a piece of %d", i, limit, spliceChunk)
		}
		spliced += limit
	}
	if want := int64(len(data) - 100); spliced != want || counter.bypassed != want {
		t.Fatalf("%d bytes were spliced and the writer passed was told of %d, want the %d on the connection", spliced, counter.bypassed, want)
	}
	if len(obj.done) != 1 || !obj.done[0] {
		t.Fatalf("the parts were given back as %v, want one whole", obj.done)
	}
}

// TestSpliceWriterKeptOpenOverHTTP serves an object whose parts come on
// connections that go on after them to a real HTTP/1 client twice on one
// connection, the second time cut short at first: each answer is the
// object and nothing after it, so the client's connection serves the
// next request.
func TestSpliceWriterKeptOpenOverHTTP(t *testing.T) {
	data := pattern(3<<20 + 11)
	obj := newConnObject(t, data)
	obj.keepOpen = true
	obj.trailer = []byte("the next answer")
	failed := 0
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idle := newIdleWriter(w)
		counter := &bypassCounter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: idle}}
		r = r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
		_, _ = obj.Seek(0, io.SeekStart)
		http.ServeContent(newSpliceWriter(counter, r, obj, obj, exactSpliceTo(counter, r), func() { failed++ }), r, "", time.Time{}, obj)
	}))
	defer server.Close()
	client := server.Client()
	for i := range 2 {
		obj.cutAfter = 0
		if i == 1 {
			obj.conns, obj.cutAfter = 0, 1<<20+7
		}
		resp, err := client.Get(server.URL + "/nar/x.nar")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil || !bytes.Equal(got, data) || failed != 0 {
			t.Fatalf("answer %d: %d of %d bytes, equal %v, %d failures, %v", i, len(got), len(data), bytes.Equal(got, data), failed, err)
		}
	}
	if len(obj.done) != 3 || !obj.done[0] || obj.done[1] || !obj.done[2] {
		t.Fatalf("the parts were given back as %v, want whole, then cut, then whole", obj.done)
	}
}

// TestExactSpliceNeedsWritersThatLetBytesPass: a writer on the way that
// may need the bytes (an access log's recorder) leaves no exact splice,
// and a server with no idle timeout splices through its writers.
func TestExactSpliceNeedsWritersThatLetBytesPass(t *testing.T) {
	rec := httptest.NewRecorder()
	idle := newIdleWriter(rec)
	r := httptest.NewRequest(http.MethodGet, "/nar/x.nar", nil)
	withIdle := r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
	logged := caddyhttp.NewResponseRecorder(idle, nil, nil)
	if exact := exactSpliceTo(&bypassCounter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: logged}}, withIdle); exact != nil {
		t.Fatal("an exact splice passes below an access log's recorder")
	}
	if exact := exactSpliceTo(rec, r); exact == nil || exact.idle != nil {
		t.Fatalf("with no idle timeout: %+v, want a splice through the writers", exact)
	}
}
