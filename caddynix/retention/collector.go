package retention

import (
	"context"
	"fmt"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// Collector deletes what a cache no longer needs. The handler's retention
// loop, the admin routes and `caddy nix-cache gc|delete` all use it.
type Collector struct {
	store    storage.Store
	storeDir string
	state    *State
	idx      *index.Index
	logger   *zap.Logger
	metrics  Metrics
	// cache labels the metrics.
	cache string
	// lease is the collection lease of a shared storage while it is held.
	lease *heldLease
	// grace is how long a collection on shared storage announces what it
	// deletes before it deletes it.
	grace time.Duration
	// pace holds walks and deletions to a share of a CPU; nil: no pacing.
	pace *pacer
}

// Options are what a Collector works on.
type Options struct {
	Store storage.Store
	// StoreDir is the store directory of the cache's paths, /nix/store.
	StoreDir string
	State    *State
	// Index is the cache's open index.
	Index  *index.Index
	Logger *zap.Logger
	// Metrics is told what collections do; nil tells nobody.
	Metrics Metrics
	// Cache names the cache in logs and metrics.
	Cache string
	// Grace is how long a collection on shared storage announces what it
	// deletes before it deletes it: the storage's gc_grace.
	Grace time.Duration
	// CPUShare, between 0 and 1, holds the walks of the storage and the
	// deletions of a collector in a serving process to that share of one
	// CPU: they rest between steps, and requests get the rest. 0 runs them
	// at full speed.
	CPUShare float64
}

// NewCollector returns a collector of the cache that opts describe.
func NewCollector(opts Options) *Collector {
	metrics := opts.Metrics
	if metrics == nil {
		metrics = noMetrics{}
	}
	return &Collector{store: opts.Store, storeDir: opts.StoreDir, state: opts.State, idx: opts.Index,
		logger: opts.Logger, metrics: metrics, cache: opts.Cache, grace: opts.Grace, pace: newPacer(opts.CPUShare)}
}

// Index is the index the collector works on.
func (c *Collector) Index() *index.Index { return c.idx }

// withLease runs collect while this process holds the collection lease of
// a shared storage, and refuses when another node holds it.
func (c *Collector) withLease(ctx context.Context, collect func() error) error {
	leaser, ok := c.store.(storage.Leaser)
	if !ok {
		return collect()
	}
	ok, current, err := leaser.TryLease(ctx, leaseName, leaseHolder(), LeaseTTL)
	if err != nil {
		return fmt.Errorf("taking the collection lease: %w", err)
	}
	if !ok {
		return fmt.Errorf("another node collects this cache (%s): nothing was deleted; try again later", current)
	}
	c.lease = &heldLease{leaser: leaser}
	defer func() {
		c.lease = nil
		if err := leaser.ReleaseLease(context.WithoutCancel(ctx), leaseName, leaseHolder()); err != nil {
			c.logger.Warn("releasing the collection lease; it expires by itself", zap.Error(err))
		}
	}()
	return collect()
}
