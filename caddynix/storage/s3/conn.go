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
// with Connection: close, so that the body ends where the connection does
// and the connection can be handed to the kernel. The connection is closed
// when the context of the GET ends.
type connBody struct {
	conn *net.TCPConn
	br   *bufio.Reader
	// remaining is how much of the body is not yet read off br.
	remaining int64
	// closes is whether the server said it closes the connection after
	// the body, which handing the connection over needs.
	closes bool
	// stop ends the watch that closes the connection with the context.
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
	if errors.Is(err, io.EOF) && b.remaining > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *connBody) Close() error {
	b.stop()
	return b.conn.Close()
}

// handOver returns the bytes of the body already read off the connection,
// and the connection, which carries the rest of the body and then ends.
func (b *connBody) handOver() ([]byte, *net.TCPConn, error) {
	if int64(b.br.Buffered()) > b.remaining {
		_ = b.Close()
		return nil, nil, fmt.Errorf("the S3 server sent more than the %d bytes its Content-Length announced", b.remaining)
	}
	read, _ := b.br.Peek(b.br.Buffered())
	b.remaining = 0
	_ = b.conn.SetReadDeadline(time.Time{})
	return read, b.conn, nil
}

// connGet GETs length bytes of the object key from start, or the whole
// object for a negative length, on a connection of its own, through a
// presigned URL; with a non-empty etag only from that version. It returns
// once the server has answered, within answerTimeout, with the object's
// description from the answer's headers.
func (s *Store) connGet(ctx context.Context, key, etag string, start, length int64) (*connBody, minio.ObjectInfo, error) {
	signed, err := s.core.PresignedGetObject(ctx, s.bucket, key, presignedLifetime, nil)
	if err != nil {
		return nil, minio.ObjectInfo{}, fmt.Errorf("signing a GET of %s: %w", key, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, signed.String(), nil)
	if err != nil {
		return nil, minio.ObjectInfo{}, err
	}
	req.Close = true
	if etag != "" {
		req.Header.Set("If-Match", `"`+etag+`"`)
	}
	if length >= 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, start+length-1))
	}
	dialer := net.Dialer{Timeout: answerTimeout}
	c, err := dialer.DialContext(ctx, "tcp", hostPort(signed))
	if err != nil {
		return nil, minio.ObjectInfo{}, fmt.Errorf("connecting to the S3 server: %w", err)
	}
	conn := c.(*net.TCPConn)
	body := &connBody{conn: conn, br: bufio.NewReader(conn)}
	body.stop = context.AfterFunc(ctx, func() { _ = conn.Close() })
	header, err := body.answer(req, key, start, length)
	if err == nil {
		var info minio.ObjectInfo
		if info, err = answerInfo(key, header, body.remaining); err == nil {
			return body, info, nil
		}
	}
	_ = body.Close()
	return nil, minio.ObjectInfo{}, err
}

// answer sends req and reads the server's answer up to its body, and
// returns the answer's headers.
func (b *connBody) answer(req *http.Request, key string, start, length int64) (http.Header, error) {
	_ = b.conn.SetDeadline(time.Now().Add(answerTimeout))
	if err := req.Write(b.conn); err != nil {
		return nil, noConnAnswer(fmt.Errorf("sending a GET of %s: %w", key, err))
	}
	resp, err := http.ReadResponse(b.br, req)
	if err != nil {
		return nil, noConnAnswer(fmt.Errorf("reading the answer to a GET of %s: %w", key, err))
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
