package retention

import (
	"context"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// Reindex brings the index in line with the files, reading every narinfo
// again with full, and counts what is stored.
func (c *Collector) Reindex(ctx context.Context, full bool) (index.ReconcileStats, error) {
	c.state.collecting.Lock()
	defer c.state.collecting.Unlock()
	start := time.Now()
	stats, err := c.sync(ctx, full)
	if err != nil {
		return stats, err
	}
	paths, size, err := storedSize(c.idx)
	if err != nil {
		return stats, err
	}
	c.metrics.Stored(c.cache, paths, size)
	fields := []zap.Field{
		zap.String("cache", c.cache),
		zap.Int("narinfos", stats.Narinfos),
		zap.Int("indexed", stats.Added),
		zap.Int("forgotten", stats.Removed),
		zap.Int64("size_bytes", size),
		zap.Duration("took", time.Since(start)),
	}
	if len(stats.Invalid) > 0 {
		c.logger.Warn("some narinfos break the cache's rule and are neither served nor indexed; `caddy nix-cache verify` lists them",
			append(fields, zap.Int("invalid", len(stats.Invalid)), zap.String("first", stats.Invalid[0]))...)
	} else if stats.Added > 0 || stats.Removed > 0 {
		c.logger.Info("indexed the cache", fields...)
	}
	return stats, nil
}

// sync brings the index in line with the storage. An index built anew, or
// with full, also adopts the run records kept in the storage.
func (c *Collector) sync(ctx context.Context, full bool) (index.ReconcileStats, error) {
	rebuild := full || !c.idx.Complete()
	stats, err := c.idx.Reconcile(ctx, c.walking(), c.storeDir, full)
	if err != nil || !rebuild {
		return stats, err
	}
	c.metrics.IndexRebuilt(c.cache)
	return stats, c.adoptRuns(ctx)
}
