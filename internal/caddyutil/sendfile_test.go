package caddyutil

import (
	"bytes"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
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

func TestSendfileWriterHandsOnTheFile(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 10000)
	file := filepath.Join(t.TempDir(), "x.nar")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		offset, n   int64
		wantFileFed bool
	}{
		{"whole file", 0, int64(len(data)), true},
		{"tail of the file", 512, int64(len(data)) - 512, true},
		{"range short of the end", 100, 1000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Seek(tc.offset, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			rec := &readerRecorder{ResponseRecorder: httptest.NewRecorder()}
			lr := &io.LimitedReader{R: f, N: tc.n}
			n, err := NewSendfileWriter(rec, f, int64(len(data))).ReadFrom(lr)
			if err != nil || n != tc.n {
				t.Fatalf("ReadFrom = %d, %v; want %d bytes", n, err, tc.n)
			}
			if _, fileFed := rec.given.(*os.File); fileFed != tc.wantFileFed {
				t.Errorf("the next writer got %T; want the *os.File: %v", rec.given, tc.wantFileFed)
			}
			if lr.N != 0 {
				t.Errorf("limit left at %d after the copy; want 0", lr.N)
			}
			if want := data[tc.offset : tc.offset+tc.n]; !bytes.Equal(rec.Body.Bytes(), want) {
				t.Errorf("wrote %d bytes that differ from the file's %d", rec.Body.Len(), len(want))
			}
		})
	}
}
