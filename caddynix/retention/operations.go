package retention

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// The operations on a cache that its admin routes and `caddy nix-cache`
// commands offer, on a Collector whether Caddy runs it or not.

// PathInfo is what `path-info` shows of a store path.
type PathInfo struct {
	index.Path
	Hash       string     `json:"hash"`
	LastServed *time.Time `json:"last_served,omitempty"`
	Pins       []string   `json:"pins,omitempty"`
	// Overlays are the overlays that hold the path too, or only.
	Overlays []OverlayCopy `json:"overlays,omitempty"`
}

// PathInfo describes a store path the cache holds: sizes, references, who
// pushed it and when, when it was last served and the pins on it, and
// every overlay that holds it, with the ref that pushed it there.
func (c *Collector) PathInfo(ctx context.Context, storePath string) (*PathInfo, error) {
	if err := c.state.FlushServed(); err != nil {
		return nil, err
	}
	hash, err := hashOfStorePath(c.storeDir, storePath)
	if err != nil {
		return nil, err
	}
	copies, err := c.overlayCopies(ctx, hash)
	if err != nil {
		return nil, err
	}
	p, err := c.lookup(storePath)
	if errors.Is(err, ErrUnknownPath) && len(copies) > 0 {
		return &PathInfo{Hash: hash, Overlays: copies}, nil
	}
	if err != nil {
		return nil, err
	}
	info := &PathInfo{Path: p, Hash: p.Hash, Overlays: copies}
	if err := c.gatherUses(ctx, false); err != nil {
		return nil, err
	}
	served, err := c.idx.Served()
	if err != nil {
		return nil, err
	}
	if at, ok := served[p.Hash]; ok {
		info.LastServed = &at
	}
	pins, err := c.Pins(ctx)
	if err != nil {
		return nil, err
	}
	for _, pin := range pins {
		if pin.Hash == p.Hash {
			info.Pins = append(info.Pins, pin.Name)
		}
	}
	return info, nil
}

// DeletePath deletes one store path. While paths the cache keeps
// reference it, it refuses, unless withReferrers, which deletes them too.
// Pinned paths are never deleted this way: remove the pin first.
//
// The path also goes from every overlay that holds it, with the paths of
// that overlay that reference it, and so does every overlay path that
// references a path deleted from the cache proper: an overlay is one
// ref's cache, whose jobs build again what it no longer holds.
func (c *Collector) DeletePath(ctx context.Context, storePath string, withReferrers bool) (report *Report, err error) {
	hash, err := hashOfStorePath(c.storeDir, storePath)
	if err != nil {
		return nil, err
	}
	target, err := c.lookup(storePath)
	inOverlays := false
	if errors.Is(err, ErrUnknownPath) {
		copies, cerr := c.overlayCopies(ctx, hash)
		if cerr != nil {
			return nil, cerr
		}
		inOverlays = len(copies) > 0
	}
	if err != nil && !inOverlays {
		return nil, err
	}
	c.state.collecting.Lock()
	defer c.state.collecting.Unlock()
	err = c.withLease(ctx, func() error {
		doomed := []string{hash}
		if inOverlays {
			report = &Report{listAll: true}
		} else {
			if report, err = c.deleteClosureOf(ctx, target, withReferrers); err != nil {
				return err
			}
			doomed = doomed[:0]
			for _, deleted := range report.Deleted {
				doomed = append(doomed, path.Base(deleted)[:hashLen])
			}
		}
		return c.deleteFromOverlays(ctx, doomed, report)
	})
	return report, err
}

// deleteClosureOf is deletePath's work, under the collection lock and
// lease.
func (c *Collector) deleteClosureOf(ctx context.Context, target index.Path, withReferrers bool) (*Report, error) {
	c.state.track(true)
	defer c.state.track(false)
	cat, err := loadCatalog(c.idx)
	if err != nil {
		return nil, err
	}
	targetID, ok := cat.findHash(target.Hash)
	if !ok {
		return nil, fmt.Errorf("%s: %w", target.StorePath, ErrUnknownPath)
	}
	referrers := referrersOf(cat)
	// Everything that needs the target, with how far above it it is.
	depth := map[uint32]int{targetID: 0}
	queue := []uint32{targetID}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		for _, r := range referrers(id) {
			if _, seen := depth[r]; !seen {
				depth[r] = depth[id] + 1
				queue = append(queue, r)
			}
		}
	}
	victims := slices.Collect(maps.Keys(depth))
	// Farthest referrers first, so that nothing kept is ever left with a
	// missing reference.
	slices.SortFunc(victims, func(a, b uint32) int {
		return cmp.Or(cmp.Compare(depth[b], depth[a]), bytes.Compare(cat.key(a), cat.key(b)))
	})
	if len(victims) > 1 && !withReferrers {
		var names []string
		if err := c.eachRecord(cat, victims, func(p *index.Path) {
			if p.Hash != target.Hash {
				names = append(names, p.StorePath)
			}
		}); err != nil {
			return nil, err
		}
		slices.Sort(names)
		if len(names) > 5 {
			names = append(names[:5], fmt.Sprintf("and %d more", len(names)-5))
		}
		return nil, fmt.Errorf("%s is referenced by %d paths the cache keeps (%s): delete them too with --with-referrers (with_referrers=true)",
			target.StorePath, len(victims)-1, strings.Join(names, ", "))
	}
	pins, err := c.Pins(ctx)
	if err != nil {
		return nil, err
	}
	for _, pin := range pins {
		if id, ok := cat.findHash(pin.Hash); ok {
			if _, doomed := depth[id]; doomed {
				return nil, fmt.Errorf("%s is pinned as %q: remove the pin first", pin.StorePath, pin.Name)
			}
		}
	}
	narUsers := make([]int, len(cat.narSize))
	for _, nar := range cat.nar {
		narUsers[nar]++
	}
	var nars []uint32
	for _, id := range victims {
		if narUsers[cat.nar[id]]--; narUsers[cat.nar[id]] == 0 {
			nars = append(nars, id)
		}
	}
	var hashes, narNames []string
	if c.lease != nil {
		if hashes, narNames, err = c.names(cat, victims, nars); err != nil {
			return nil, err
		}
	}
	withdraw, err := c.settle(ctx, hashes, narNames, nil)
	if err != nil {
		return nil, err
	}
	defer withdraw()
	report := &Report{Paths: cat.len(), listAll: true}
	report.SizeBefore = cat.size()
	freed, err := c.deletePaths(ctx, cat, victims, nars, report)
	report.SizeAfter = report.SizeBefore - freed
	if err != nil {
		return report, err
	}
	c.metrics.Deleted(c.cache, report)
	c.logger.Info("deleted a path", zap.String("store_path", target.StorePath), zap.Strings("deleted", report.Deleted), zap.Int64("freed_bytes", report.FreedBytes))
	if report.KeptByUploads > 0 {
		return report, fmt.Errorf("an upload needed %s while it was deleted: %d paths were kept", target.StorePath, report.KeptByUploads)
	}
	return report, nil
}
