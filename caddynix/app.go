package caddynix

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// App runs the background work of a configuration's nix_cache handlers:
// it indexes each cache when Caddy starts, collects it on its retention
// interval and writes down when paths were served. The handlers load it
// themselves; it has no configuration of its own. Being an app, it starts
// only when Caddy runs the configuration, never under `caddy validate`.
type App struct {
	handlers []*Handler
	cancel   context.CancelFunc
	wg       *sync.WaitGroup
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "nix_cache",
		New: func() caddy.Module { return new(App) },
	}
}

// register adds a provisioned handler, whose background work starts with
// the app. Caddy provisions a configuration's modules one at a time.
func (a *App) register(h *Handler) {
	a.handlers = append(a.handlers, h)
}

// Start starts every handler's background work.
func (a *App) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.wg = cancel, new(sync.WaitGroup)
	for _, h := range a.handlers {
		h.startServing()
		a.wg.Go(func() { h.runBackground(ctx) })
		a.wg.Go(func() { h.sampleActivity(ctx) })
	}
	return nil
}

// Stop ends the background work and waits for it: a collection stops
// between two deletions.
func (a *App) Stop() error {
	for _, h := range a.handlers {
		h.stopServing()
	}
	if a.cancel != nil {
		a.cancel()
		a.wg.Wait()
	}
	return nil
}

// servedFlushInterval is how often served times are written to the index.
const servedFlushInterval = 30 * time.Second

// runBackground opens and indexes the cache, then collects it and writes
// down served times until ctx ends.
func (h *Handler) runBackground(ctx context.Context) {
	if h.store == storage.Empty {
		return // nothing of its own to index
	}
	h.state.SetStore(h.store, h.Retention != nil)
	idx, err := h.state.Open(ctx, h.logger)
	if err != nil {
		if ctx.Err() == nil {
			h.logger.Error("the cache index is unavailable: uploads are stored without provenance and nothing is collected", zap.Error(err))
		}
		return
	}
	c := h.collector(idx)
	if _, err := c.Reindex(ctx, false); err != nil && ctx.Err() == nil {
		h.logger.Error("indexing the cache", zap.Error(err))
	}

	flush := time.NewTicker(servedFlushInterval)
	defer flush.Stop()
	var collect <-chan time.Time
	if h.Retention != nil {
		ticker := time.NewTicker(time.Duration(h.Retention.Interval))
		defer ticker.Stop()
		collect = ticker.C
	}
	for {
		select {
		case <-ctx.Done():
			if err := h.state.FlushServed(); err != nil {
				h.logger.Error("writing served times to the index", zap.Error(err))
			}
			return
		case <-flush.C:
			if err := h.state.FlushServed(); err != nil {
				h.logger.Error("writing served times to the index", zap.Error(err))
			}
		case <-collect:
			if _, err := c.Collect(ctx, h.Retention.policy(), false); err != nil && ctx.Err() == nil {
				h.logger.Error("collecting the cache", zap.Error(err))
			}
		}
	}
}

// Interface guards
var (
	_ caddy.App = (*App)(nil)
)
