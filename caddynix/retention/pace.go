package retention

import (
	"context"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// pacer holds a collection that runs in a serving process to a share of
// one CPU: after each step of its work it rests for as long as that share
// asks, so that the requests the process serves get the rest. A nil pacer
// never rests.
type pacer struct {
	rest  float64 // seconds of rest for each second of work
	since time.Time
}

// newPacer returns a pacer to share (0 < share < 1) of a CPU, or nil for
// any other share: no pacing.
func newPacer(share float64) *pacer {
	if share <= 0 || share >= 1 {
		return nil
	}
	return &pacer{rest: (1 - share) / share, since: time.Now()}
}

// start marks the beginning of work.
func (p *pacer) start() {
	if p != nil {
		p.since = time.Now()
	}
}

// pause rests after the work done since the last pause or start.
func (p *pacer) pause(ctx context.Context) {
	if p == nil {
		return
	}
	rest := time.Duration(float64(time.Since(p.since)) * p.rest)
	t := time.NewTimer(rest)
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	t.Stop()
	p.since = time.Now()
}

// walkStep is how many objects a paced walk lists between rests.
const walkStep = 1024

// pacedWalks is a store whose walks rest every walkStep objects.
type pacedWalks struct {
	storage.Store
	pace *pacer
}

// Walk walks dir, resting every walkStep objects.
func (s pacedWalks) Walk(ctx context.Context, dir string, fn func(storage.Info) error) error {
	n := 0
	s.pace.start()
	return storage.Walk(ctx, s.Store, dir, func(info storage.Info) error {
		if n++; n%walkStep == 0 {
			s.pace.pause(ctx)
		}
		return fn(info)
	})
}

// walking is c's store for reads that walk a whole directory: paced
// when c is.
func (c *Collector) walking() storage.Store {
	if c.pace == nil {
		return c.store
	}
	return pacedWalks{Store: c.store, pace: c.pace}
}
