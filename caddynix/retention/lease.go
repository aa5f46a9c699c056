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

// CollectionLease says which node holds the collection lease of a shared
// storage, and until when: nobody, when no collection runs or store is
// not shared.
func CollectionLease(ctx context.Context, store storage.Store) (holder string, until time.Time, err error) {
	reader, ok := store.(storage.LeaseReader)
	if !ok {
		return "", time.Time{}, nil
	}
	return reader.LeaseHolder(ctx, leaseName)
}

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
