package serve

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

func TestMemoryBodyWriterHidesReadFrom(t *testing.T) {
	// A writer that can ReadFrom, as Caddy's are.
	var rec http.ResponseWriter = struct {
		*httptest.ResponseRecorder
		io.ReaderFrom
	}{ResponseRecorder: httptest.NewRecorder()}
	var w any = memoryBodyWriter{rec}
	if _, ok := w.(io.ReaderFrom); ok {
		t.Fatal("memoryBodyWriter exposes ReadFrom; in-memory bodies would be written after a separate header flush")
	}
	if got := w.(memoryBodyWriter).Unwrap(); got != rec {
		t.Fatal("Unwrap does not return the wrapped writer")
	}
}

// recordingListener keeps a copy of everything its connections write.
type recordingListener struct {
	net.Listener
	mu      sync.Mutex
	written bytes.Buffer
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, l: l}, nil
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.l.mu.Lock()
	c.l.written.Write(p)
	c.l.mu.Unlock()
	return c.Conn.Write(p)
}

// tlsRecordSizes reads the lengths of the TLS records in stream, a
// server's side of a connection.
func tlsRecordSizes(t *testing.T, stream []byte) []int {
	t.Helper()
	var sizes []int
	for len(stream) >= 5 {
		n := int(binary.BigEndian.Uint16(stream[3:5]))
		if len(stream) < 5+n {
			t.Fatalf("a TLS record of %d bytes is cut at %d", n, len(stream)-5)
		}
		sizes = append(sizes, n)
		stream = stream[5+n:]
	}
	return sizes
}

// TestStreamWriterFillsTLSRecordsOverHTTP2 downloads a body over HTTP/2
// with TLS, as Nix's curl does, and reads the sizes of the TLS records
// the server sent: a DATA frame of 16 KiB with its 9-byte header does not
// fit one record, and would go out as a full record and one of 9 bytes.
func TestStreamWriterFillsTLSRecordsOverHTTP2(t *testing.T) {
	body := pattern(4 << 20)
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(newStreamWriter(w, r), r, "", time.Time{}, bytes.NewReader(body))
	}))
	listener := &recordingListener{Listener: server.Listener}
	server.Listener = listener
	server.EnableHTTP2 = true
	server.StartTLS()
	defer server.Close()

	resp, err := server.Client().Get(server.URL + "/nar/x.nar")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || resp.ProtoMajor != 2 || !bytes.Equal(got, body) {
		t.Fatalf("over %s: %d of %d bytes, equal %v, %v", resp.Proto, len(got), len(body), bytes.Equal(got, body), err)
	}

	listener.mu.Lock()
	sizes := tlsRecordSizes(t, listener.written.Bytes())
	listener.mu.Unlock()
	// 9 bytes of a frame, in a record with TLS 1.3's 17 bytes of type
	// and tag.
	small, full := 0, 0
	for _, n := range sizes {
		switch {
		case n <= 9+17:
			small++
		case n >= 16<<10:
			full++
		}
	}
	if frames := len(body) / (16 << 10); full < frames*9/10 || small > frames/10 {
		t.Fatalf("%d bytes over HTTP/2 went out in %d TLS records: %d full and %d of a few bytes, want about %d full ones", len(body), len(sizes), full, small, frames)
	}
}
