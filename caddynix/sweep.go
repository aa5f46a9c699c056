package caddynix

import (
	"context"
	"sync"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

var swept struct {
	sync.Mutex
	roots map[string]bool
}

// sweepLeftovers removes what uploads interrupted by a crash or kill -9
// left behind, once per root and process. What live writers hold, such as
// a running server's uploads seen from `caddy validate`, stays.
func (h *Handler) sweepLeftovers(ctx context.Context) {
	sweeper, ok := h.store.(storage.Sweeper)
	if !ok {
		return
	}
	swept.Lock()
	defer swept.Unlock()
	if swept.roots == nil {
		swept.roots = map[string]bool{}
	}
	if swept.roots[h.root] {
		return
	}
	swept.roots[h.root] = true
	removed, err := sweeper.RemoveAbandoned(ctx)
	for _, name := range removed {
		h.logger.Info("removed an interrupted upload", zap.String("file", name))
	}
	if err != nil {
		h.logger.Warn("removing interrupted uploads", zap.Error(err))
	}
}
