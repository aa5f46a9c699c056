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
	conns      int
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

func (o *connObject) ReadConn(n int64) ([]byte, *net.TCPConn, error) {
	off, _ := o.Seek(0, io.SeekCurrent)
	send := append([]byte(nil), o.data[off:off+n]...)
	send = append(send, bytes.Repeat([]byte("x"), o.extra)...)
	if o.conns == 0 && o.cutAfter > 0 {
		send = send[:o.cutAfter]
	}
	stall := o.conns == 0 && o.stallAfter > 0
	if stall {
		send = send[:o.stallAfter]
	}
	o.conns++
	go func() {
		server, err := o.listener.Accept()
		if err != nil {
			return
		}
		_, _ = server.Write(send[min(len(send), 100):])
		if stall {
			_, _ = io.Copy(io.Discard, server) // until the reader closes
		}
		_ = server.Close()
	}()
	conn, err := net.Dial("tcp", o.listener.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	if stall {
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	}
	return send[:min(len(send), 100)], conn.(*net.TCPConn), nil
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

// serveSpliced answers a GET of obj with a spliceWriter below Caddy's
// write idle timeout, and returns the recorder and the idle timeout's
// writer.
func serveSpliced(t *testing.T, obj *connObject) (rec *readFromRecorder, idle *caddyhttp.IdleTimeoutWriter, failed int) {
	t.Helper()
	rec = &readFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	idle = &caddyhttp.IdleTimeoutWriter{
		ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: rec},
		Ctrl:                  http.NewResponseController(rec),
		Deadline:              caddyhttp.IdleDeadline{Timeout: time.Minute},
		MaxChunk:              caddyhttp.DefaultMaxWriteChunk,
		Logger:                zap.NewNop(),
	}
	r := httptest.NewRequest(http.MethodGet, "/nar/x.nar", nil)
	r = r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
	if !spliceable(r) {
		t.Fatal("a plain HTTP/1 GET is not spliceable")
	}
	idle.Header().Set("Content-Type", "application/x-nix-nar")
	http.ServeContent(newSpliceWriter(idle, r, obj, obj, func() { failed++ }), r, "", time.Time{}, obj)
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
	for _, src := range rec.sources {
		lr, ok := src.(*io.LimitedReader)
		if !ok {
			t.Fatalf("the client's connection was asked to read from a %T", src)
		}
		if _, ok := lr.R.(*net.TCPConn); !ok {
			t.Fatalf("the client's connection was asked to read from a LimitedReader around a %T, which Go cannot splice", lr.R)
		}
	}
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
		idle := &caddyhttp.IdleTimeoutWriter{
			ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
			Ctrl:                  http.NewResponseController(w),
			Deadline:              caddyhttp.IdleDeadline{Timeout: time.Minute},
			MaxChunk:              caddyhttp.DefaultMaxWriteChunk,
			Logger:                zap.NewNop(),
		}
		r = r.WithContext(caddyhttp.ContextWithIdleTimeouts(r.Context(), nil, idle))
		if !spliceable(r) {
			t.Error("a plain HTTP/1 GET is not spliceable")
		}
		http.ServeContent(newSpliceWriter(idle, r, obj, obj, func() { failed++ }), r, "", time.Time{}, obj)
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
