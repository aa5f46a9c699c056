package retention

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// announce writes that a collection on shared storage is about to delete
// paths and nars, and returns the announcement and a function that
// withdraws it.
func (c *Collector) announce(ctx context.Context, paths, nars []string) (*announcement, func(), error) {
	a := &announcement{
		Holder:  leaseHolder(),
		Grace:   c.grace,
		Expires: time.Now().Add(c.grace + LeaseTTL).UTC(),
		Paths:   paths,
		Nars:    nars,
	}
	a.indexNames()
	data, err := json.Marshal(a)
	if err != nil {
		return nil, nil, err
	}
	if err := storage.WriteAll(ctx, c.store, AnnouncementName, data); err != nil {
		return nil, nil, fmt.Errorf("announcing what the collection deletes: %w", err)
	}
	return a, func() {
		if err := c.store.Delete(context.WithoutCancel(ctx), AnnouncementName); err != nil {
			c.logger.Warn("withdrawing the collection's announcement; it expires by itself, and until then uploads that need what it names are refused",
				zap.Error(err), zap.Time("expires", a.Expires))
		}
	}, nil
}

// settle announces what a collection on shared storage is about to delete
// (paths, their NAR files and orphaned NAR files), waits out the grace,
// and then notes as touched what narinfos stored meanwhile need, so that
// the deletions that follow keep it. It returns a function that
// withdraws the announcement once the deletions are done. On storage only
// this process uses, the closure lock does this, and settle does nothing.
func (c *Collector) settle(ctx context.Context, paths []string, nars []string, orphans []storage.Info) (withdraw func(), err error) {
	if c.lease == nil || len(paths)+len(nars)+len(orphans) == 0 {
		return func() {}, nil
	}
	doomedNars := slices.Clone(nars)
	for _, o := range orphans {
		doomedNars = append(doomedNars, o.Name)
	}
	doomed, withdraw, err := c.announce(ctx, paths, doomedNars)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			withdraw()
			withdraw = nil
		}
	}()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(c.grace):
	}
	if err := c.lease.renew(ctx); err != nil {
		return nil, err
	}
	if _, err := c.sync(ctx, false); err != nil {
		return nil, fmt.Errorf("indexing the cache after the grace: %w", err)
	}
	// Whatever a path that stays names stays: deletePaths keeps the rest of
	// the closure of what it is told was touched.
	var needed []string
	err = c.idx.Read(func(s index.Snapshot) error {
		return s.Each(func(p *index.Path) error {
			if doomed.names(p.Hash) {
				return nil
			}
			if doomed.names(p.NarURL) {
				needed = append(needed, p.NarURL)
			}
			for _, ref := range p.References {
				if doomed.names(ref) {
					needed = append(needed, ref)
				}
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	// An orphan written again since it was listed is on its way to a
	// narinfo.
	for _, o := range orphans {
		if info, err := c.store.Stat(ctx, o.Name); err == nil && !info.ModTime.Equal(o.ModTime) {
			needed = append(needed, o.Name)
		}
	}
	c.state.noteTouched(needed...)
	return withdraw, nil
}
