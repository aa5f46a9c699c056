package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/sources"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// storageFailure answers a request whose object the storage could not
// tell about, for example an S3 server that does not answer: a 503, never
// a 404 that a client would remember as a miss, and no narinfo from memory
// until the storage answers again. A file that is a symlink
// out of the cache root is a 404 instead: the cache will never serve it,
// and a 503 would make Nix give up on the cache for the rest of its
// command.
func (c *Cache) storageFailure(what, file string, err error) error {
	if errors.Is(err, storage.ErrOutsideRoot) {
		// Someone planted it: worth a warning, once, since anyone can ask.
		if _, warned := c.warnedOutside.LoadOrStore(file, true); !warned {
			c.logger.Warn("not following a symlink out of the cache root; the file is answered as missing", zap.String("file", file), zap.Error(err))
		}
		return httpx.Error(http.StatusNotFound, nil)
	}
	c.narinfos.distrust()
	c.logger.Error(what, zap.String("file", file), zap.Error(err))
	return httpx.Error(http.StatusServiceUnavailable, fmt.Errorf("the cache's storage failed: %w", err))
}

// failedMidway answers a request for a file the storage failed to give
// whole once the header was out, sent bytes of size (-1: not known): it
// is logged, and the answer cut (httpx.Aborted), so that the client's
// connection or stream is reset, where over HTTP/2 a handler that
// returns ends the stream as if it were whole, and the request counts as
// failed rather than served.
func (c *Cache) failedMidway(file string, sent, size int64, err error) error {
	if err == nil {
		err = errors.New("the storage failed in the middle of the file")
	}
	c.logger.Error("the storage failed in the middle of a file; its answer is cut", zap.String("file", file), zap.Int64("sent", sent), zap.Int64("size", size), zap.Error(err))
	return httpx.Aborted{Err: fmt.Errorf("sending %s: %w", file, err)}
}

// fromSources turns what the sources answer into the cache's answer: a
// miss is a 404, a failing source a 503, the storage failing while a path
// is kept as any storage failure.
func (c *Cache) fromSources(err error) error {
	var storageErr *sources.StorageError
	switch {
	case errors.Is(err, sources.ErrNotFound):
		return httpx.Error(http.StatusNotFound, nil)
	case errors.As(err, &storageErr):
		return c.storageFailure(storageErr.What, storageErr.File, storageErr.Err)
	}
	return err
}

// FindOverlay finds the overlay a request may read, or nil. It is asked only
// when the storage lacks what the request names, so that requests the
// cache proper answers never pay for it.
type FindOverlay func() *Cache

// fallback answers what the storage lacks: from the request's overlay,
// when it has one, then from the sources. Overlays have no sources.
func (c *Cache) fallback(overlay FindOverlay, fromOverlay func(*Cache) error, fromSources func() error) error {
	if o := overlay.find(); o != nil {
		var status *httpx.StatusError
		if err := fromOverlay(o); !errors.As(err, &status) || status.Status != http.StatusNotFound {
			return err
		}
	}
	if c.sources == nil {
		return httpx.Error(http.StatusNotFound, nil)
	}
	return fromSources()
}

// find calls f, if there is one.
func (f FindOverlay) find() *Cache {
	if f == nil {
		return nil
	}
	return f()
}

// failureNoticingObject is an object of the storage whose read failing
// is a storage failure for the narinfos kept in memory, as an object the
// storage cannot open is.
type failureNoticingObject struct {
	storage.Object
	failed func()
}

func (o *failureNoticingObject) Read(p []byte) (int, error) {
	n, err := o.Object.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, context.Canceled) {
		o.failed()
	}
	return n, err
}
