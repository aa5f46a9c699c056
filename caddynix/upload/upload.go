// Package upload receives what clients push to a nix_cache (`nix copy
// --to http(s)://…`): NARs, narinfos, listings, build logs, realisations
// and nix-cache-info. Every upload is checked in full before anything is
// visible: a NAR's file and NAR hashes and structure while it streams to a
// temporary object, a narinfo by the cache's one rule (nixfmt.Admit) and
// against the NAR it names, and a narinfo, the commit point, is written
// last, only when its NAR and references are stored, and never replaces
// another path.
//
// It knows the storage, the index and retention's gate, and nothing of
// Caddy or HTTP: the handler authenticates the client, hands over the
// body, and answers an *Error with its status.
package upload

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

const (
	// DefaultMaxNarSize bounds a NAR unless Options say otherwise.
	DefaultMaxNarSize = 8 << 30
	// DefaultMaxLogSize bounds a build log unless Options say otherwise.
	DefaultMaxLogSize = 64 << 20
	// Listings of huge closures run to a few megabytes.
	maxListingSize = 64 << 20
)

// The statuses uploads are refused with, as HTTP numbers them.
const (
	statusBadRequest       = 400
	statusMethodNotAllowed = 405
	statusConflict         = 409
	statusTooLarge         = 413
	statusUnavailable      = 503
)

// jsonCheckMemory bounds the memory that checking uploaded JSON documents
// takes at once, whatever the number of uploads: each document waits for
// its size in this budget before it is read into memory.
var jsonCheckMemory = semaphore.NewWeighted(maxListingSize)

// Error is an upload refused with an HTTP status (4xx, or 503 to try
// again) and a one-line reason.
type Error struct {
	Status int
	// Reason is a short label for metrics, such as nar_hash_mismatch.
	Reason string
	Msg    string
	// RetryAfter, when set, is how long the client should wait.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

// Reject returns an *Error.
func Reject(status int, reason, format string, args ...any) *Error {
	return &Error{Status: status, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

func reject(status int, reason, format string, args ...any) *Error {
	return Reject(status, reason, format, args...)
}

// Metrics is told the bytes each upload brought, by kind (nar, narinfo,
// ls, log, realisations).
type Metrics interface {
	Received(kind string, bytes int64)
}

type noMetrics struct{}

func (noMetrics) Received(string, int64) {}

// Options are what a Receiver stores into and checks against.
type Options struct {
	Store storage.Store
	// StoreDir is the store directory of the cache's paths, /nix/store.
	StoreDir string
	// Keys are the cache's signing keys: a pushed signature that claims one
	// of their names is dropped.
	Keys []signature.SecretKey
	// State is the cache's retention state, whose gate commits pass.
	State *retention.State
	// Grace is the storage's gc_grace.
	Grace  time.Duration
	Logger *zap.Logger
	// MaxNarSize and MaxLogSize bound uploads; 0 means the defaults.
	MaxNarSize, MaxLogSize int64
	Metrics                Metrics
}

// Receiver takes the uploads of one cache.
type Receiver struct {
	store      storage.Store
	storeDir   string
	keys       []signature.SecretKey
	state      *retention.State
	grace      time.Duration
	logger     *zap.Logger
	maxNarSize int64
	maxLogSize int64
	metrics    Metrics
	pending    *pendingNars
}

// New returns a Receiver for the cache opts describe.
func New(opts Options) *Receiver {
	u := &Receiver{store: opts.Store, storeDir: opts.StoreDir, keys: opts.Keys, state: opts.State, grace: opts.Grace,
		logger: opts.Logger, maxNarSize: opts.MaxNarSize, maxLogSize: opts.MaxLogSize, metrics: opts.Metrics, pending: new(pendingNars)}
	if u.maxNarSize <= 0 {
		u.maxNarSize = DefaultMaxNarSize
	}
	if u.maxLogSize <= 0 {
		u.maxLogSize = DefaultMaxLogSize
	}
	if u.metrics == nil {
		u.metrics = noMetrics{}
	}
	return u
}

// MaxNarSize is the largest NAR the cache takes, compressed or not.
func (u *Receiver) MaxNarSize() int64 { return u.maxNarSize }

// Body is what a client sends.
type Body struct {
	io.Reader
	// Length is the body's length as sent (Content-Length), -1 unknown.
	Length int64
	// Encoding is its Content-Encoding, undone before it is checked.
	Encoding string
}

// plain reports whether the body is sent as it is, with no encoding.
func (b Body) plain() bool {
	switch strings.ToLower(b.Encoding) {
	case "", "identity", "none":
		return true
	}
	return false
}

// Put checks and stores an upload of the file req names, pushed by
// pusher. A refusal is an *Error.
func (u *Receiver) Put(ctx context.Context, req cacheurl.Request, body Body, pusher *index.Pusher) error {
	switch req.Kind {
	case cacheurl.Nar:
		return u.putNar(ctx, req, body)
	case cacheurl.NarInfo:
		return u.putNarInfo(ctx, req, body, pusher)
	case cacheurl.CacheInfo:
		return u.putCacheInfo(ctx, body)
	case cacheurl.Listing:
		return u.putDocument(ctx, req.File, body, maxListingSize, true)
	case cacheurl.Realisation:
		return u.putDocument(ctx, req.File, body, nixfmt.MaxSmallDocumentSize, true)
	case cacheurl.Log:
		return u.putDocument(ctx, req.File, body, u.maxLogSize, false)
	}
	return reject(statusMethodNotAllowed, "bad_path", "/%s cannot be uploaded", req.File)
}
