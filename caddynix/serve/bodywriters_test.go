package serve

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
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

// TestStreamWriterFillsTLSRecordsOverHTTP2 downloads a body over HTTP/2
// with TLS, as Nix's curl does, from a server without Caddy's write idle
// timeout, and reads the sizes of the TLS records the server sent.
func TestStreamWriterFillsTLSRecordsOverHTTP2(t *testing.T) {
	body := pattern(4 << 20)
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(newStreamWriter(w, r), r, "", time.Time{}, bytes.NewReader(body))
	}))
	server.EnableHTTP2 = true
	server.StartTLS()
	defer server.Close()
	proxy := harness.StartFaultProxy(t, server.Listener.Addr().String())
	proxy.Record()

	resp, err := server.Client().Get("https://" + proxy.Addr + "/nar/x.nar")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || resp.ProtoMajor != 2 || !bytes.Equal(got, body) {
		t.Fatalf("over %s: %d of %d bytes, equal %v, %v", resp.Proto, len(got), len(body), bytes.Equal(got, body), err)
	}
	if err := harness.CheckFullTLSRecords(proxy.Sent(), len(body)); err != nil {
		t.Fatal(err)
	}
}
