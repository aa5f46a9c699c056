package s3

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/minio/minio-go/v7"
)

// openConnReader opens name as a server that splices it would.
func openConnReader(t *testing.T, s *Store, name string) storage.ConnReader {
	t.Helper()
	obj, _, err := s.Open(storage.WithConnReads(t.Context()), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = obj.Close() })
	reader, ok := obj.(storage.ConnReader)
	if !ok {
		t.Fatalf("an object opened for connection reads is a %T, not a storage.ConnReader", obj)
	}
	return reader
}

// readConns reads n bytes from obj's read position as a splicing server
// does: a connection at a time, each read to its end, resuming from
// where the last one stopped.
func readConns(obj storage.ConnReader, n int64) ([]byte, int, error) {
	var got bytes.Buffer
	conns := 0
	for n > 0 {
		read, conn, err := obj.ReadConn(n)
		if err != nil {
			return got.Bytes(), conns, err
		}
		if conn == nil {
			return got.Bytes(), conns, errors.New("ReadConn handed over no connection")
		}
		conns++
		got.Write(read)
		m, _ := io.Copy(&got, conn)
		_ = conn.Close()
		taken := int64(len(read)) + m
		n -= taken
		if _, err := obj.Seek(taken, io.SeekCurrent); err != nil {
			return got.Bytes(), conns, err
		}
	}
	return got.Bytes(), conns, nil
}

// TestConnReads reads objects off connections handed over: the whole
// object on Open's own connection, ranges on new ones, a missing object
// is missing, and a replaced one is an error rather than a mix of
// versions.
func TestConnReads(t *testing.T) {
	store, _ := newStore(t, "")
	if !store.connReads {
		t.Fatal("a store on a plain HTTP endpoint does not read on connections of its own")
	}
	data := pattern(3<<20 + 17)
	put(t, store, "nar/conn.nar", data)

	// The answer to the GET describes the object as a stat does.
	opened, openInfo, err := store.Open(storage.WithConnReads(t.Context()), "nar/conn.nar")
	if err != nil {
		t.Fatal(err)
	}
	_ = opened.Close()
	statInfo, err := store.Stat(t.Context(), "nar/conn.nar")
	if err != nil || openInfo.Size != statInfo.Size || !openInfo.ModTime.Equal(statInfo.ModTime) || openInfo.Version != statInfo.Version ||
		openInfo.ContentEncoding != statInfo.ContentEncoding || openInfo.Size != int64(len(data)) || openInfo.Version == "" {
		t.Fatalf("opened for connection reads: %+v; stat: %+v, %v", openInfo, statInfo, err)
	}

	obj := openConnReader(t, store, "nar/conn.nar")
	got, conns, err := readConns(obj, int64(len(data)))
	if err != nil || !bytes.Equal(got, data) || conns != 1 {
		t.Fatalf("the whole object: %d of %d bytes on %d connections, equal %v, %v", len(got), len(data), conns, bytes.Equal(got, data), err)
	}
	if n, err := obj.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("a read after the end gave %d bytes, %v", n, err)
	}

	// A range ends where it was asked to, although the object goes on.
	if _, err := obj.Seek(777, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, _, err = readConns(obj, 500<<10)
	if err != nil || !bytes.Equal(got, data[777:777+500<<10]) {
		t.Fatalf("a range: %d bytes, %v", len(got), err)
	}

	// Read rather than handed over, the connection gives the object too.
	read := openConnReader(t, store, "nar/conn.nar")
	if all, err := io.ReadAll(read); err != nil || !bytes.Equal(all, data) {
		t.Fatalf("read off Open's connection: %d of %d bytes, %v", len(all), len(data), err)
	}

	if _, _, err := store.Open(storage.WithConnReads(t.Context()), "nar/missing.nar"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("opening a missing object for connection reads: %v, want fs.ErrNotExist", err)
	}

	// Replaced after Open: the next connection is refused.
	replaced := openConnReader(t, store, "nar/conn.nar")
	put(t, store, "nar/conn.nar", pattern(1<<20))
	if _, err := replaced.Seek(10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, _, err := replaced.ReadConn(100); err == nil {
		t.Fatal("a connection of an object replaced since it was opened was handed over")
	}
}

// TestAnswerInfoReadsAsMinio: what the node reads of a GET's answer is
// what minio's client reads of it, which Stat and listings go by.
func TestAnswerInfoReadsAsMinio(t *testing.T) {
	for _, header := range []http.Header{
		{"Etag": {`"0a1b2c"`}, "Last-Modified": {"Mon, 07 Dec 2026 21:37:44 GMT"}},
		{"Etag": {`"0a1b2c-3"`}, "Last-Modified": {"Fri, 4 Dec 2026 09:05:01 GMT"}, "Content-Encoding": {" zstd "}},
		{"Etag": {"unquoted"}, "Last-Modified": {"Fri,  4 Dec 26 09:05:01 GMT"}, "Content-Encoding": {"aws-chunked,gzip"}},
		{"Etag": {`"0a"`}, "Last-Modified": {"Fri, 04 Dec 2026 09:05:01 GMT"}, "X-Minio-Source-Mtime": {"2026-12-01T10:11:12.123456789Z"}},
		{"Last-Modified": {"Fri, 04 Dec 2026 09:05:01 GMT"}, "Content-Encoding": {"identity"}},
	} {
		want, err := minio.ToObjectInfo("nix", "main/nar/x.nar", header)
		if err != nil {
			t.Fatalf("minio reads %v: %v", header, err)
		}
		got, err := answerInfo("main/nar/x.nar", header, 42)
		if err != nil {
			t.Fatalf("reading %v: %v", header, err)
		}
		want.Size = 42
		if a, b := infoOf("nar/x.nar", got), infoOf("nar/x.nar", want); a.Size != b.Size || !a.ModTime.Equal(b.ModTime) || a.ModTime.IsZero() ||
			a.Version != b.Version || a.ContentEncoding != b.ContentEncoding {
			t.Errorf("%v reads as %+v; minio reads it as %+v", header, a, b)
		}
	}
	for _, header := range []http.Header{
		{"Etag": {`"0a"`}},
		{"Etag": {`"0a"`}, "Last-Modified": {"yesterday"}},
		{"Etag": {`"0a"`}, "Last-Modified": {"Fri, 04 Dec 2026 09:05:01 GMT"}, "X-Minio-Source-Mtime": {"now"}},
	} {
		if _, err := minio.ToObjectInfo("nix", "main/nar/x.nar", header); err == nil {
			t.Fatalf("minio reads %v", header)
		}
		if info, err := answerInfo("main/nar/x.nar", header, 42); err == nil {
			t.Errorf("%v reads as %+v; minio refuses it", header, info)
		}
	}
}

// TestConnReadsResumeCutStreams hands over connections that a proxy cuts
// in the middle of the S3 server's answers: resuming from the byte each
// reached gives the whole object, and a stream cut before its first byte
// every time ends in an error rather than a loop.
func TestConnReadsResumeCutStreams(t *testing.T) {
	store, proxy := storeBehindFaults(t)
	data := pattern(3 << 20)
	put(t, store, "nar/cut.nar", data)

	proxy.ResetConnections(2, 300<<10)
	obj := openConnReader(t, store, "nar/cut.nar")
	got, conns, err := readConns(obj, int64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("with every other connection cut: %d of %d bytes, equal %v, %v", len(got), len(data), bytes.Equal(got, data), err)
	}
	if proxy.Resets.Load() == 0 || conns < 2 {
		t.Fatalf("the proxy cut %d connections, and the object was read on %d: the test proved nothing", proxy.Resets.Load(), conns)
	}

	proxy.ResetConnections(1, 10)
	cutEarly, _, err := store.Open(storage.WithConnReads(t.Context()), "nar/cut.nar")
	if err == nil {
		_, _, err = readConns(cutEarly.(storage.ConnReader), int64(len(data)))
		_ = cutEarly.Close()
	}
	if err == nil {
		t.Fatal("a stream cut before every byte was read whole")
	}
}

// TestReadsResumeStalledStreams reads objects through a proxy that stops
// passing the S3 server's answers in the middle, with the connection left
// open: each read gives up on the stalled stream after stallTimeout and
// resumes it, whether the bytes come off a connection handed over, a
// connection read by the object, or the S3 client's.
func TestReadsResumeStalledStreams(t *testing.T) {
	defer func(timeout time.Duration) { stallTimeout = timeout }(stallTimeout)
	stallTimeout = 300 * time.Millisecond
	store, proxy := storeBehindFaults(t)
	data := pattern(2 << 20)
	put(t, store, "nar/stall.nar", data)

	reads := []struct {
		name string
		read func() ([]byte, error)
	}{
		{"handed over", func() ([]byte, error) {
			got, _, err := readConns(openConnReader(t, store, "nar/stall.nar"), int64(len(data)))
			return got, err
		}},
		{"read off the object's connection", func() ([]byte, error) {
			return io.ReadAll(openConnReader(t, store, "nar/stall.nar"))
		}},
		{"read through the S3 client", func() ([]byte, error) {
			obj, _, err := store.Open(t.Context(), "nar/stall.nar")
			if err != nil {
				return nil, err
			}
			defer obj.Close()
			return io.ReadAll(obj)
		}},
	}
	for _, read := range reads {
		stalledBefore := proxy.Stalled.Load()
		proxy.StallConnections(2, 300<<10)
		got, err := read.read()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s, with every other connection stalled: %d of %d bytes, equal %v, %v", read.name, len(got), len(data), bytes.Equal(got, data), err)
		}
		if proxy.Stalled.Load() == stalledBefore {
			t.Fatalf("%s: the proxy stalled no connection, and the test proved nothing", read.name)
		}
	}
}
