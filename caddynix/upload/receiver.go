package upload

import (
	"io"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
)

const (
	// DefaultMaxNarSize bounds a NAR unless Options say otherwise.
	DefaultMaxNarSize = 8 << 30
	// DefaultMaxLogSize bounds a build log unless Options say otherwise.
	DefaultMaxLogSize = 64 << 20
)

// Metrics is told the bytes each upload brought, by kind (nar, narinfo,
// ls, log, realisations), and of every trusted push of a path that an
// overlay holds with another NAR.
type Metrics interface {
	Received(kind string, bytes int64)
	Diverged()
}

type noMetrics struct{}

func (noMetrics) Received(string, int64) {}
func (noMetrics) Diverged()              {}

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
	// overlay, for a Receiver of the ref tier, is the overlay it stores
	// into, on top of base, the cache proper.
	overlay *overlay.Key
	base    storage.Store
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
