package serve

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
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
