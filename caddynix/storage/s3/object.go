package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/minio/minio-go/v7"
)

// answerTimeout bounds the wait for the S3 server to answer a read, its
// headers rather than its whole body: a server that holds requests makes
// the node answer 503 instead of holding its own clients.
const answerTimeout = 10 * time.Second

// errNoAnswer is why a read gave up on a server that did not answer.
var errNoAnswer = fmt.Errorf("the S3 server did not answer within %s", answerTimeout)

// clientGet GETs the object key through the S3 client. The GET is given
// up when the server has not answered within answerTimeout, and its body
// when a read of it waits stallTimeout for a byte (stallingBody).
func (s *Store) clientGet(ctx context.Context, key string, opts minio.GetObjectOptions) (io.ReadCloser, minio.ObjectInfo, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	unanswered := time.AfterFunc(answerTimeout, func() { cancel(errNoAnswer) })
	body, info, _, err := s.core.GetObject(ctx, s.bucket, key, opts)
	unanswered.Stop()
	if err != nil {
		err = noAnswer(ctx, err)
		cancel(nil)
		return nil, minio.ObjectInfo{}, err
	}
	return newStallingBody(body, cancel), info, nil
}

// noAnswer names the timeout in err when it was the cause.
func noAnswer(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errNoAnswer) {
		return fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	return err
}

// maxResumes is how many times in a row a read resumes a cut stream
// without getting a byte further before it gives up.
const maxResumes = 5

// object reads an object with ranged GETs, each conditional on the ETag
// the object had when it was opened, so that a reader never mixes two
// versions. A stream the network cuts (a reset, an early end) is resumed
// from the byte it reached, so that a client reading a NAR through the
// node gets it whole.
type object struct {
	ctx   context.Context
	store *Store
	key   string
	size  int64
	etag  string

	off     int64
	body    io.ReadCloser
	bodyOff int64
	// resumes counts the resumptions since the last byte read.
	resumes int

	// conns is whether the object's GETs are made on connections of its
	// own, which ReadConn hands over.
	conns bool
	// handedAt is where ReadConn last handed a connection over; -1 before.
	handedAt int64
	// unwatch ends the stall watch of the connection last handed over.
	unwatch func()
}

func (o *object) get(start, end int64) (io.ReadCloser, error) {
	if o.conns {
		length := o.size - start
		if end >= 0 {
			length = end - start + 1
		}
		body, _, err := o.store.connGet(o.ctx, o.key, o.etag, start, length)
		if err != nil {
			return nil, o.readFailure(err)
		}
		if !body.closes {
			// A server that keeps the connection open after the body
			// cannot have it handed over: read it, and GET the rest
			// through the S3 client.
			o.conns = false
		}
		return body, nil
	}
	var opts minio.GetObjectOptions
	if o.etag != "" {
		if err := opts.SetMatchETag(o.etag); err != nil {
			return nil, err
		}
	}
	if start > 0 || end >= 0 {
		if end < 0 {
			end = 0 // to the end
		}
		if err := opts.SetRange(start, end); err != nil {
			return nil, err
		}
	}
	body, _, err := o.store.clientGet(o.ctx, o.key, opts)
	if err != nil {
		return nil, o.readFailure(err)
	}
	return body, nil
}

// readFailure says why a GET after the first failed.
func (o *object) readFailure(err error) error {
	if minio.ToErrorResponse(err).StatusCode == http.StatusPreconditionFailed {
		return fmt.Errorf("%s changed while it was read: %w", o.key, err)
	}
	return notFound(o.key, err)
}

// cutTooOften is the error of a read that gave up on a stream cut again
// and again at the same byte.
func (o *object) cutTooOften(err error) error {
	return fmt.Errorf("reading %s: the stream was cut %d times at byte %d of %d: %w", o.key, maxResumes+1, o.off, o.size, err)
}

func (o *object) Read(p []byte) (int, error) {
	for {
		if o.off >= o.size {
			return 0, io.EOF
		}
		if o.body == nil || o.bodyOff != o.off {
			if o.body != nil {
				_ = o.body.Close()
			}
			body, err := o.get(o.off, -1)
			if err != nil {
				o.body = nil
				return 0, err
			}
			o.body, o.bodyOff = body, o.off
		}
		n, err := o.body.Read(p)
		o.off += int64(n)
		o.bodyOff += int64(n)
		if n > 0 {
			o.resumes = 0
		}
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, io.EOF) && o.off >= o.size:
			return n, io.EOF
		case o.ctx.Err() != nil:
			return n, err
		}
		// Cut short: the next read asks again from here, with the same
		// ETag, so that the bytes still come from the version opened.
		_ = o.body.Close()
		o.body = nil
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if n > 0 {
			return n, nil
		}
		if o.resumes == maxResumes {
			return 0, o.cutTooOften(err)
		}
		o.resumes++
	}
}

// ReadConn hands over a connection that carries the next n bytes: the one
// Open's GET is on when it is at the read position with n bytes left,
// another GET's otherwise.
func (o *object) ReadConn(n int64) ([]byte, *net.TCPConn, error) {
	o.endWatch()
	if !o.conns || n <= 0 || o.off+n > o.size {
		return nil, nil, nil
	}
	if o.handedAt == o.off {
		// The connection handed over from here brought nothing.
		if o.resumes == maxResumes {
			return nil, nil, o.cutTooOften(io.ErrUnexpectedEOF)
		}
		o.resumes++
	} else {
		o.resumes = 0
	}
	body, ok := o.body.(*connBody)
	if !ok || o.bodyOff != o.off || body.remaining != n {
		if o.body != nil {
			_ = o.body.Close()
		}
		o.body = nil
		next, err := o.get(o.off, o.off+n-1)
		if err != nil {
			return nil, nil, err
		}
		o.body, o.bodyOff = next, o.off
		if body, ok = next.(*connBody); !ok || !body.closes {
			return nil, nil, nil
		}
	}
	o.body = nil
	o.handedAt = o.off
	read, conn, err := body.handOver()
	if err == nil {
		o.unwatch = watchStall(conn)
	}
	return read, conn, err
}

// endWatch ends the stall watch of the connection last handed over, which
// its reader is done with once it asks for another or moves the read
// position.
func (o *object) endWatch() {
	if o.unwatch != nil {
		o.unwatch()
		o.unwatch = nil
	}
}

func (o *object) Seek(offset int64, whence int) (int64, error) {
	o.endWatch()
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += o.off
	case io.SeekEnd:
		offset += o.size
	default:
		return 0, errors.New("invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("negative position")
	}
	o.off = offset
	return offset, nil
}

func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), o.size) - 1
	want := int(end - off + 1)
	got, resumes := 0, 0
	for got < want {
		body, err := o.get(off+int64(got), end)
		if err != nil {
			return got, err
		}
		n, err := io.ReadFull(body, p[got:want])
		_ = body.Close()
		got += n
		if err == nil {
			break
		}
		// Cut short: ask again for the rest, as Read does.
		if n > 0 {
			resumes = 0
		}
		if o.ctx.Err() != nil || resumes == maxResumes {
			return got, fmt.Errorf("reading %s at byte %d: %w", o.key, off+int64(got), err)
		}
		resumes++
	}
	if got < len(p) {
		return got, io.EOF
	}
	return got, nil
}

func (o *object) Close() error {
	o.endWatch()
	if o.body != nil {
		return o.body.Close()
	}
	return nil
}

// Stat describes the object name.
func (s *Store) Stat(ctx context.Context, name string) (storage.Info, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, answerTimeout, errNoAnswer)
	defer cancel()
	obj, err := s.core.StatObject(ctx, s.bucket, s.key(name), minio.StatObjectOptions{})
	err = noAnswer(ctx, err)
	if err != nil {
		return storage.Info{}, notFound(name, err)
	}
	return infoOf(name, obj), nil
}

// Open opens the object name with one GET, whose body serves the reads
// from the start; a read elsewhere fetches that range. Under a context
// from storage.WithConnReads and over plain HTTP, the GETs are made on
// connections of their own, which the object's ReadConn hands over.
func (s *Store) Open(ctx context.Context, name string) (storage.Object, storage.Info, error) {
	if s.connReads && storage.ConnReadsWanted(ctx) {
		body, obj, err := s.connGet(ctx, s.key(name), "", 0, -1)
		if err != nil {
			return nil, storage.Info{}, notFound(name, err)
		}
		info := infoOf(name, obj)
		return &object{ctx: ctx, store: s, key: s.key(name), size: info.Size, etag: info.Version, body: body, conns: body.closes, handedAt: -1}, info, nil
	}
	body, obj, err := s.clientGet(ctx, s.key(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, storage.Info{}, notFound(name, err)
	}
	info := infoOf(name, obj)
	return &object{ctx: ctx, store: s, key: s.key(name), size: info.Size, etag: info.Version, body: body, handedAt: -1}, info, nil
}

// Interface guard
var _ storage.ConnReader = (*object)(nil)
