package s3

import (
	"bufio"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// presignedLifetime is how long the URL of a GET made on a connection of
// the node's own is valid: it is used at once, so this only needs to
// outlast the clock skew S3 servers accept anyway.
const presignedLifetime = 15 * time.Minute

// errorBodyLimit bounds what is read of an S3 server's error answer.
const errorBodyLimit = 64 << 10

// connBody is the body of a GET made on a connection of the node's own,
// which can be handed to the kernel: with Connection: close, so that the
// body ends where the connection does, or, for a reader that takes no
// more than the body's bytes, on a connection kept open for the next GET
// (pool). The connection is closed when the context of the GET ends.
type connBody struct {
	conn *net.TCPConn
	br   *bufio.Reader
	// remaining is how much of the body is not yet read off br.
	remaining int64
	// closes is whether the server said it closes the connection after
	// the body.
	closes bool
	// pool takes the connection back once the body is read whole, if the
	// server keeps it open; nil for a GET with Connection: close.
	pool *connPool
	// broken is whether a read of the body failed, which leaves the
	// connection in the middle of an answer.
	broken bool
	// stop ends the watch that closes the connection with the context,
	// and reports whether it had not yet done so.
	stop func() bool
}

func (b *connBody) Read(p []byte) (int, error) {
	if b.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	_ = b.conn.SetReadDeadline(time.Now().Add(stallTimeout))
	n, err := b.br.Read(p)
	b.remaining -= int64(n)
	if err != nil {
		b.broken = true
		if errors.Is(err, io.EOF) && b.remaining > 0 {
			err = io.ErrUnexpectedEOF
		}
	}
	return n, err
}

// Close gives the connection back to the pool when the body was read to
// its end, and closes it otherwise.
func (b *connBody) Close() error {
	b.release(b.remaining == 0 && !b.broken)
	return nil
}

// release gives the connection back to the pool when whole says the body
// was read to its end, on a connection the server keeps open and the
// context did not close; it closes it otherwise.
func (b *connBody) release(whole bool) {
	if b.stop() && whole && b.pool != nil && !b.closes && b.br.Buffered() == 0 {
		_ = b.conn.SetReadDeadline(time.Time{})
		b.pool.put(b.conn, b.br)
		return
	}
	_ = b.conn.Close()
}

// handOver returns the bytes of the body already read off the connection,
// the connection, which carries the rest of the body, and how many bytes
// that is; ends says whether the connection ends with them.
func (b *connBody) handOver() (read []byte, rest int64, ends bool, err error) {
	buffered := b.br.Buffered()
	if int64(buffered) > b.remaining {
		b.release(false)
		return nil, 0, false, fmt.Errorf("the S3 server sent more than the %d bytes its Content-Length announced", b.remaining)
	}
	// Discarded but not yet overwritten: no read of br comes before the
	// connection is given back.
	read, _ = b.br.Peek(buffered)
	_, _ = b.br.Discard(buffered)
	rest = b.remaining - int64(buffered)
	b.remaining = 0
	_ = b.conn.SetReadDeadline(time.Time{})
	return read, rest, b.closes, nil
}

// connGet GETs length bytes of the object key from start, or the whole
// object for a negative length, on a connection of its own, through a
// presigned URL; with a non-empty etag only from that version. keepOpen
// asks the server to keep the connection open after the body, and takes
// it from the pool when one waits there. It returns once the server has
// answered, within answerTimeout, with the object's description from the
// answer's headers.
func (s *Store) connGet(ctx context.Context, key, etag string, start, length int64, keepOpen bool) (*connBody, minio.ObjectInfo, error) {
	signed, err := s.core.PresignedGetObject(ctx, s.bucket, key, presignedLifetime, nil)
	if err != nil {
		return nil, minio.ObjectInfo{}, fmt.Errorf("signing a GET of %s: %w", key, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, signed.String(), nil)
	if err != nil {
		return nil, minio.ObjectInfo{}, err
	}
	req.Close = !keepOpen
	if etag != "" {
		req.Header.Set("If-Match", `"`+etag+`"`)
	}
	if length >= 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, start+length-1))
	}
	reuse := keepOpen
	for {
		body, reused, err := s.connTo(ctx, signed, keepOpen, reuse)
		if err != nil {
			return nil, minio.ObjectInfo{}, err
		}
		header, err := body.answer(req, key, start, length)
		if err == nil {
			var info minio.ObjectInfo
			if info, err = answerInfo(key, header, body.remaining); err == nil {
				return body, info, nil
			}
		}
		body.release(false)
		var unanswered *unansweredError
		if reused && errors.As(err, &unanswered) && !errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			// The server closed the connection while it waited: send
			// the GET again on a new one.
			reuse = false
			continue
		}
		return nil, minio.ObjectInfo{}, err
	}
}

// connTo returns a body to read an answer into, on a connection to the
// server of signed: one kept open from an earlier GET when reuse allows
// and one waits (reused), a new one otherwise.
func (s *Store) connTo(ctx context.Context, signed *url.URL, keepOpen, reuse bool) (body *connBody, reused bool, err error) {
	body = &connBody{}
	if keepOpen {
		body.pool = &s.conns
	}
	if reuse {
		body.conn, body.br, reused = s.conns.take()
	}
	if !reused {
		dialer := net.Dialer{Timeout: answerTimeout}
		c, err := dialer.DialContext(ctx, "tcp", hostPort(signed))
		if err != nil {
			return nil, false, fmt.Errorf("connecting to the S3 server: %w", err)
		}
		s.conns.dialed.Add(1)
		body.conn = c.(*net.TCPConn)
		body.br = bufio.NewReader(body.conn)
	}
	conn := body.conn
	body.stop = context.AfterFunc(ctx, func() { _ = conn.Close() })
	return body, reused, nil
}

// unansweredError is a GET that failed before the server's answer began:
// the request could not be sent, or no status line came back.
type unansweredError struct{ err error }

func (e *unansweredError) Error() string { return e.err.Error() }
func (e *unansweredError) Unwrap() error { return e.err }

// answer sends req and reads the server's answer up to its body, and
// returns the answer's headers.
func (b *connBody) answer(req *http.Request, key string, start, length int64) (http.Header, error) {
	_ = b.conn.SetDeadline(time.Now().Add(answerTimeout))
	if err := req.Write(b.conn); err != nil {
		return nil, noConnAnswer(&unansweredError{fmt.Errorf("sending a GET of %s: %w", key, err)})
	}
	resp, err := http.ReadResponse(b.br, req)
	if err != nil {
		return nil, noConnAnswer(&unansweredError{fmt.Errorf("reading the answer to a GET of %s: %w", key, err)})
	}
	_ = b.conn.SetDeadline(time.Time{})
	wantStatus := http.StatusOK
	if length >= 0 {
		wantStatus = http.StatusPartialContent
	}
	if resp.StatusCode != wantStatus {
		return nil, errorAnswer(resp, key)
	}
	if length >= 0 {
		want := fmt.Sprintf("bytes %d-%d/", start, start+length-1)
		if resp.ContentLength != length || !strings.HasPrefix(resp.Header.Get("Content-Range"), want) {
			return nil, fmt.Errorf("the S3 server answered a GET of bytes %d-%d of %s with %q, %d bytes", start, start+length-1, key, resp.Header.Get("Content-Range"), resp.ContentLength)
		}
	}
	if resp.ContentLength < 0 {
		return nil, fmt.Errorf("the S3 server answered a GET of %s without a Content-Length", key)
	}
	b.remaining = resp.ContentLength
	b.closes = resp.Close
	return resp.Header, nil
}

// lastModifiedLayouts are the forms of Last-Modified minio.ToObjectInfo
// accepts: RFC 7231's, with or without a leading zero in the day, and
// with a two-digit year.
var lastModifiedLayouts = []string{"Mon, 2 Jan 2006 15:04:05 GMT", "Mon, _2 Jan 2006 15:04:05 GMT", "Mon, _2 Jan 06 15:04:05 GMT"}

// answerInfo describes the object of size bytes a GET of key was answered
// with, from what infoOf reads of it, as minio.ToObjectInfo reads it: the
// ETag without its quotes, Last-Modified or MinIO's X-Minio-Source-Mtime
// over it, and Content-Encoding. ToObjectInfo itself also parses the
// metadata, tags, checksums and lifecycle headers, which a read of an
// object does not need, on the path of every NAR served from the bucket.
func answerInfo(key string, header http.Header, size int64) (minio.ObjectInfo, error) {
	info := minio.ObjectInfo{
		Key:             key,
		Size:            size,
		ETag:            strings.TrimSuffix(strings.TrimPrefix(header.Get("ETag"), `"`), `"`),
		ContentEncoding: strings.TrimSpace(header.Get("Content-Encoding")),
	}
	if mtime := header.Get("X-Minio-Source-Mtime"); mtime != "" {
		t, err := time.Parse(time.RFC3339Nano, mtime)
		if err != nil {
			return minio.ObjectInfo{}, fmt.Errorf("the S3 server answered a GET of %s with an X-Minio-Source-Mtime that is no RFC 3339 time: %w", key, err)
		}
		info.LastModified = t
		return info, nil
	}
	lastModified := header.Get("Last-Modified")
	for _, layout := range lastModifiedLayouts {
		if t, err := time.Parse(layout, lastModified); err == nil {
			info.LastModified = t
			return info, nil
		}
	}
	return minio.ObjectInfo{}, fmt.Errorf("the S3 server answered a GET of %s with a Last-Modified of %q, which is no HTTP date", key, lastModified)
}

// noConnAnswer names the timeout in err when the server did not answer in
// time.
func noConnAnswer(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	return err
}

// errorAnswer turns an S3 server's error answer into the minio error the
// rest of the store reads codes and statuses from.
func errorAnswer(resp *http.Response, key string) error {
	answer := minio.ErrorResponse{StatusCode: resp.StatusCode, Key: key}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, errorBodyLimit))
	if xml.Unmarshal(body, &answer) != nil || answer.Code == "" {
		answer.Code = http.StatusText(resp.StatusCode)
		if resp.StatusCode == http.StatusNotFound {
			answer.Code = "NotFound"
		}
	}
	if answer.Message == "" {
		answer.Message = resp.Status
	}
	return answer
}

// hostPort is the address to dial for u, a plain HTTP URL.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// connReadable reports whether the node can GET objects from endpoint on
// connections of its own, which ReadConn hands over: over plain HTTP, and
// with no proxy between, as the S3 client itself would use one.
func connReadable(endpoint *url.URL) bool {
	if endpoint.Scheme != "http" {
		return false
	}
	proxy, err := http.ProxyFromEnvironment(&http.Request{URL: endpoint})
	return err == nil && proxy == nil
}
