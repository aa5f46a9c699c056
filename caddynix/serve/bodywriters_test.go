package serve

import (
	"io"
	"net/http/httptest"
	"testing"
)

// readerRecorder is a response writer that records what ReadFrom is given.
type readerRecorder struct {
	*httptest.ResponseRecorder
	given io.Reader
}

func (r *readerRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.given = src
	return io.Copy(r.ResponseRecorder, src)
}

func TestMemoryBodyWriterHidesReadFrom(t *testing.T) {
	rec := &readerRecorder{ResponseRecorder: httptest.NewRecorder()}
	var w any = memoryBodyWriter{rec}
	if _, ok := w.(io.ReaderFrom); ok {
		t.Fatal("memoryBodyWriter exposes ReadFrom; in-memory bodies would be written after a separate header flush")
	}
	if got := w.(memoryBodyWriter).Unwrap(); got != rec {
		t.Fatal("Unwrap does not return the wrapped writer")
	}
}
