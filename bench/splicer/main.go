// Command splicer serves the objects of an S3 bucket over HTTP/1 the way
// nix_cache on S3 serves NARs, with nothing of Caddy's: for each GET it
// signs a GET of the object, sends it to the S3 server and hands the
// server's connection to net/http, which splices the body into the
// client's connection. BenchmarkS3 runs it beside nix_cache, as what a Go
// server pays for the same work on the same core.
//
// With -least it does the least a Go proxy can: unsigned GETs (the bucket
// must allow anonymous reads) on kept-alive connections, as haproxy does.
//
// With -caddy the same handler runs as a Caddy HTTP handler under Caddy's
// own server, with Caddy's default timeouts, and splices in 2 MiB pieces
// as the node does: what Caddy's request handling adds to the node's
// work, with nothing of the node's.
//
// Usage: splicer -listen 127.0.0.1:PORT -endpoint http://HOST:PORT -bucket B
// [-prefix P] [-least] [-caddy], with the S3 credentials in
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.uber.org/zap"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	endpoint := flag.String("endpoint", "", "the S3 server's URL, http://host:port")
	bucket := flag.String("bucket", "", "the bucket")
	prefix := flag.String("prefix", "", "prefix of the object keys")
	least := flag.Bool("least", false, "unsigned GETs on kept-alive connections")
	underCaddy := flag.Bool("caddy", false, "serve under Caddy's HTTP server")
	flag.Parse()
	if err := run(*listen, *endpoint, *bucket, *prefix, *least, *underCaddy); err != nil {
		fmt.Fprintln(os.Stderr, "splicer:", err)
		os.Exit(1)
	}
}

func run(listen, endpoint, bucket, prefix string, least, underCaddy bool) error {
	base, err := url.Parse(endpoint)
	if err != nil || base.Scheme != "http" || bucket == "" {
		return fmt.Errorf("-endpoint must be an http:// URL and -bucket set (got %q, %q)", endpoint, bucket)
	}
	client, err := minio.New(base.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return err
	}
	logger, err := zap.NewProduction()
	if err != nil {
		return err
	}
	s := &splicer{logger: logger, client: client, base: base, bucket: bucket, prefix: prefix, least: least, idle: make(chan *s3Conn, 64)}
	if underCaddy {
		return serveUnderCaddy(listen, s)
	}
	return http.ListenAndServe(listen, s)
}

type splicer struct {
	logger *zap.Logger
	client *minio.Client
	base   *url.URL
	bucket string
	prefix string
	least  bool
	// idle holds kept-alive connections to the S3 server (-least).
	idle chan *s3Conn
}

type s3Conn struct {
	*net.TCPConn
	br *bufio.Reader
}

func (s *splicer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := s.serve(w, r); err != nil {
		s.logger.Error("serving", zap.String("path", r.URL.Path), zap.Error(err))
	}
}

func (s *splicer) serve(w http.ResponseWriter, r *http.Request) error {
	key := s.prefix + r.URL.Path[1:]
	target := s.base.JoinPath(s.bucket, key)
	if !s.least {
		signed, err := s.client.PresignedGetObject(r.Context(), s.bucket, key, 15*time.Minute, nil)
		if err != nil {
			http.Error(w, "signing failed", http.StatusBadGateway)
			return err
		}
		target = signed
	}
	conn, err := s.conn(r.Context())
	if err != nil {
		http.Error(w, "no connection to the S3 server", http.StatusBadGateway)
		return err
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, target.String(), nil)
	if err != nil {
		_ = conn.Close()
		return err
	}
	req.Close = !s.least
	if err := req.Write(conn); err != nil {
		_ = conn.Close()
		http.Error(w, "the S3 server went away", http.StatusBadGateway)
		return err
	}
	resp, err := http.ReadResponse(conn.br, req)
	if err != nil || resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		_ = conn.Close()
		http.Error(w, "the S3 server did not answer the GET", http.StatusBadGateway)
		if err == nil {
			err = fmt.Errorf("the S3 server answered %s", resp.Status)
		}
		return err
	}
	w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	w.WriteHeader(http.StatusOK)
	// The body's first bytes may have come with the headers.
	read, _ := conn.br.Peek(min(conn.br.Buffered(), int(resp.ContentLength)))
	if _, err := w.Write(read); err != nil {
		_ = conn.Close()
		return err
	}
	_, _ = conn.br.Discard(len(read))
	// Without -least the connection ends with the body, and net/http
	// splices it whole; with -least it stays open for the next GET.
	var body io.Reader = conn.TCPConn
	rest := &io.LimitedReader{R: conn.TCPConn, N: resp.ContentLength - int64(len(read))}
	if s.least {
		body = rest
	}
	_, err = w.(io.ReaderFrom).ReadFrom(body)
	if s.least && err == nil && rest.N == 0 && !resp.Close {
		s.release(conn)
		return nil
	}
	_ = conn.Close()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return err
}

// conn is a connection to the S3 server: a kept-alive one with -least.
func (s *splicer) conn(ctx context.Context) (*s3Conn, error) {
	select {
	case c := <-s.idle:
		return c, nil
	default:
	}
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", s.base.Host)
	if err != nil {
		return nil, err
	}
	tcp := c.(*net.TCPConn)
	return &s3Conn{TCPConn: tcp, br: bufio.NewReader(tcp)}, nil
}

func (s *splicer) release(c *s3Conn) {
	select {
	case s.idle <- c:
	default:
		_ = c.Close()
	}
}
