package retention

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// When several nodes share a cache's storage, one collects at a time: it
// holds the lease object below for as long as it deletes, renewing it
// between batches. A directory needs none: its index is locked by the one
// process that collects it.
const (
	leaseName = "retention/lease"
	// LeaseTTL is how long a collection lease lasts unless renewed.
	LeaseTTL = 10 * time.Minute
)

// leaseHolder names this process in the leases it takes.
var leaseHolder = sync.OnceValue(func() string {
	host, _ := os.Hostname()
	random := make([]byte, 4)
	_, _ = rand.Read(random)
	return fmt.Sprintf("%s pid %d (%s)", host, os.Getpid(), hex.EncodeToString(random))
})

// heldLease is a collection lease this process holds.
type heldLease struct {
	leaser storage.Leaser
}

// renew extends the lease; it fails when another node has taken it, which
// only happens when this one let it expire.
func (l *heldLease) renew(ctx context.Context) error {
	if l == nil {
		return nil
	}
	ok, current, err := l.leaser.TryLease(ctx, leaseName, leaseHolder(), LeaseTTL)
	if err != nil {
		return fmt.Errorf("renewing the collection lease: %w", err)
	}
	if !ok {
		return fmt.Errorf("the collection lease was lost to %s: stopping", current)
	}
	return nil
}

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
