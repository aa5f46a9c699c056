package retention

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
			report = &Report{}
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
	paths, err := c.idx.Paths()
	if err != nil {
		return nil, err
	}
	graph := graphOf(paths)
	// Everything that needs the target, with how far above it it is.
	depth := map[string]int{target.Hash: 0}
	queue := []string{target.Hash}
	for len(queue) > 0 {
		hash := queue[0]
		queue = queue[1:]
		for _, r := range graph.referrers[hash] {
			if _, seen := depth[r]; !seen {
				depth[r] = depth[hash] + 1
				queue = append(queue, r)
			}
		}
	}
	if len(depth) > 1 && !withReferrers {
		var names []string
		for hash := range depth {
			if hash != target.Hash {
				names = append(names, paths[hash].StorePath)
			}
		}
		slices.Sort(names)
		if len(names) > 5 {
			names = append(names[:5], fmt.Sprintf("and %d more", len(names)-5))
		}
		return nil, fmt.Errorf("%s is referenced by %d paths the cache keeps (%s): delete them too with --with-referrers (with_referrers=true)",
			target.StorePath, len(depth)-1, strings.Join(names, ", "))
	}
	pins, err := c.Pins(ctx)
	if err != nil {
		return nil, err
	}
	for _, pin := range pins {
		if _, doomed := depth[pin.Hash]; doomed {
			return nil, fmt.Errorf("%s is pinned as %q: remove the pin first", pin.StorePath, pin.Name)
		}
	}
	var victims []*index.Path
	for hash := range depth {
		victims = append(victims, paths[hash])
	}
	// Farthest referrers first, so that nothing kept is ever left with a
	// missing reference.
	slices.SortFunc(victims, func(a, b *index.Path) int {
		return cmp.Or(cmp.Compare(depth[b.Hash], depth[a.Hash]), cmp.Compare(a.Hash, b.Hash))
	})
	var nars []string
	for _, p := range victims {
		if graph.releaseNar(p) {
			nars = append(nars, p.NarURL)
		}
	}
	hashes := make([]string, len(victims))
	for i, p := range victims {
		hashes[i] = p.Hash
	}
	withdraw, err := c.settle(ctx, hashes, nars, nil)
	if err != nil {
		return nil, err
	}
	defer withdraw()
	report := &Report{Paths: len(paths)}
	report.SizeBefore = CacheSize(paths)
	freed, err := c.deletePaths(ctx, victims, nars, report)
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
