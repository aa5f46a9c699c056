package serve

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// statsTTL is how long the landing page's path count and size are reused:
// counting walks the whole cache directory.
const statsTTL = 30 * time.Second

// cacheStats is what the landing page says about the cache's content.
type cacheStats struct {
	Paths    int
	NarBytes int64
}

type statsCache struct {
	mu    sync.Mutex
	at    time.Time
	stats cacheStats
}

// get returns the cache's statistics, counting again when they are older
// than statsTTL.
func (s *statsCache) get(ctx context.Context, store storage.Store) cacheStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.at) < statsTTL && !s.at.IsZero() {
		return s.stats
	}
	var stats cacheStats
	if entries, err := store.List(ctx, ""); err == nil {
		for _, e := range entries {
			if strings.HasSuffix(e.Name, ".narinfo") {
				stats.Paths++
			}
		}
	}
	if nars, err := store.List(ctx, "nar"); err == nil {
		for _, nar := range nars {
			stats.NarBytes += nar.Size
		}
	}
	s.stats, s.at = stats, time.Now()
	return stats
}
