package retention

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"go.uber.org/zap"
)

// OverlayCopy is a path as an overlay holds it: pushed by a job of the
// overlay's repository and ref.
type OverlayCopy struct {
	Overlay  string    `json:"overlay"`
	NarHash  string    `json:"nar_hash"`
	NarURL   string    `json:"nar_url"`
	LastPush time.Time `json:"overlay_last_push"`
}

// DefaultOverlayMaxAge is how long an overlay whose ref pushes nothing is
// kept, unless the policy says otherwise.
const DefaultOverlayMaxAge = 7 * 24 * time.Hour

// OverlayKey is the name under which uploads into the overlay id and a
// collection that drops it meet at the gate (AdmitCommit, Touch).
func OverlayKey(id string) string { return "overlay:" + id }

// overlayContent is what a collection finds in an overlay.
type overlayContent struct {
	overlay.Record
	// Bytes are the bytes of its narinfos and NAR files.
	Bytes int64
	// References are the hash parts of the paths its narinfos reference,
	// and Nars the NAR files they name: what it may need of the cache
	// proper.
	References, Nars []string
}

// scanOverlays reads every overlay: its record, its size and what its
// paths need. An overlay whose narinfos cannot be read is kept whole,
// with nothing of the cache proper protected for it, and logged.
func (c *Collector) scanOverlays(ctx context.Context) ([]*overlayContent, error) {
	records, err := overlay.List(ctx, c.store)
	if err != nil {
		if len(records) == 0 {
			return nil, fmt.Errorf("listing the overlays: %w", err)
		}
		c.logger.Warn("an overlay's record cannot be read; its overlay is neither kept track of nor dropped", zap.Error(err))
	}
	var out []*overlayContent
	for _, rec := range records {
		content := &overlayContent{Record: rec}
		view := overlay.Store(c.store, rec.ID)
		narinfos, size, err := overlayNarInfos(ctx, view, rec)
		if err != nil {
			return nil, err
		}
		content.Bytes = size
		for _, ni := range narinfos {
			content.Nars = append(content.Nars, ni.URL)
			for _, ref := range ni.References {
				if len(ref) >= hashLen {
					content.References = append(content.References, ref[:hashLen])
				}
			}
		}
		nars, err := view.List(ctx, "nar")
		if err != nil {
			return nil, fmt.Errorf("listing the NARs of the overlay of %s: %w", rec.Key, err)
		}
		for _, nar := range nars {
			content.Bytes += nar.Size
		}
		out = append(out, content)
	}
	return out, nil
}

// overlayNarInfos reads the narinfos of the overlay rec, whose storage is
// view, by hash part, and the size of the files directly in it. A narinfo
// that does not parse is never served, so it needs nothing, and is left
// out.
func overlayNarInfos(ctx context.Context, view storage.Store, rec overlay.Record) (map[string]*narinfo.NarInfo, int64, error) {
	infos, err := view.List(ctx, "")
	if err != nil {
		return nil, 0, fmt.Errorf("listing the overlay of %s: %w", rec.Key, err)
	}
	var size int64
	narinfos := map[string]*narinfo.NarInfo{}
	for _, info := range infos {
		size += info.Size
		hash, ok := strings.CutSuffix(info.Name, ".narinfo")
		if !ok {
			continue
		}
		data, err := storage.ReadAll(ctx, view, info.Name, nixfmt.MaxNarInfoSize)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("reading %s in the overlay of %s: %w", info.Name, rec.Key, err)
		}
		if ni, err := nixfmt.ParseNarInfo(data); err == nil {
			narinfos[hash] = ni
		}
	}
	return narinfos, size, nil
}

// planOverlays decides which overlays a collection drops: those whose ref
// pushed nothing for pol.OverlayMaxAge, and then, while the cache with
// its overlays is over pol.MaxSize, the least recently pushed. Overlays go
// before any path of the cache proper: they hold what only one ref's jobs
// use. cacheSize is the size of the cache proper.
func planOverlays(overlays []*overlayContent, cacheSize int64, pol Policy, now time.Time) (drop, keep []*overlayContent) {
	sorted := slices.Clone(overlays)
	slices.SortFunc(sorted, func(a, b *overlayContent) int { return a.LastPush.Compare(b.LastPush) })
	total := cacheSize
	for _, o := range sorted {
		total += o.Bytes
	}
	for _, o := range sorted {
		expired := pol.OverlayMaxAge > 0 && now.Sub(o.LastPush) > pol.OverlayMaxAge
		tooLarge := pol.MaxSize > 0 && total > pol.MaxSize
		if expired || tooLarge {
			drop = append(drop, o)
			total -= o.Bytes
			continue
		}
		keep = append(keep, o)
	}
	return drop, keep
}

// overlayRoots are the hash parts of the paths of the cache proper that
// kept overlays need: those their paths reference, and a path naming each
// NAR file their narinfos name.
func overlayRoots(keep []*overlayContent, cat *catalog) []string {
	var roots []string
	var byNar map[uint64]uint32
	for _, o := range keep {
		roots = append(roots, o.References...)
		if len(o.Nars) > 0 && byNar == nil {
			byNar = make(map[uint64]uint32, len(cat.narKeys))
			for id, nar := range cat.nar {
				byNar[cat.narKeys[nar]] = uint32(id)
			}
		}
		for _, nar := range o.Nars {
			if id, ok := byNar[index.NarKey(nar)]; ok {
				roots = append(roots, cat.hash(id))
			}
		}
	}
	return roots
}

// dropOverlays deletes the overlays drop whole, each unless an upload
// pushed to it since the plan, reports them and returns the bytes freed.
func (c *Collector) dropOverlays(ctx context.Context, drop []*overlayContent, report *Report) (int64, error) {
	var total int64
	for _, o := range drop {
		if err := c.lease.renew(ctx); err != nil {
			return total, err
		}
		err := func() error {
			c.state.closure.Lock()
			defer c.state.closure.Unlock()
			if c.state.wasTouched(OverlayKey(o.ID)) {
				return nil
			}
			_, freed, err := overlay.Drop(ctx, c.store, o.ID)
			if err != nil {
				return fmt.Errorf("dropping the overlay of %s: %w", o.Key, err)
			}
			report.Overlays = append(report.Overlays, o.String())
			report.FreedBytes += freed
			total += freed
			return nil
		}()
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// keepWhatOverlaysGained notes as touched what the overlays that stay
// need now, and the overlays pushed to since the scan, which then stay
// too: on storage that several nodes share, an upload on another node may
// have committed before it saw the collection's announcement.
func (c *Collector) keepWhatOverlaysGained(ctx context.Context, scanned, dropped []*overlayContent) error {
	if c.lease == nil {
		// Only this process writes: the closure lock keeps what uploads
		// touch.
		return nil
	}
	lastPush := map[string]time.Time{}
	for _, o := range scanned {
		lastPush[o.ID] = o.LastPush
	}
	going := map[string]bool{}
	for _, o := range dropped {
		going[o.ID] = true
	}
	now, err := c.scanOverlays(ctx)
	if err != nil {
		return err
	}
	var touched []string
	for _, o := range now {
		before, ok := lastPush[o.ID]
		unchanged := ok && o.LastPush.Equal(before)
		if unchanged && going[o.ID] {
			continue
		}
		if !unchanged {
			touched = append(touched, OverlayKey(o.ID))
		}
		touched = append(touched, o.References...)
		touched = append(touched, o.Nars...)
	}
	c.state.noteTouched(touched...)
	return nil
}

// overlayCopies returns the overlays that hold the path whose hash part is
// hash.
func (c *Collector) overlayCopies(ctx context.Context, hash string) ([]OverlayCopy, error) {
	records, err := overlay.List(ctx, c.store)
	if err != nil && len(records) == 0 {
		return nil, fmt.Errorf("listing the overlays: %w", err)
	}
	var copies []OverlayCopy
	for _, rec := range records {
		data, err := storage.ReadAll(ctx, overlay.Store(c.store, rec.ID), hash+".narinfo", nixfmt.MaxNarInfoSize)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s.narinfo in the overlay of %s: %w", hash, rec.Key, err)
		}
		ni, err := nixfmt.ParseNarInfo(data)
		if err != nil {
			continue
		}
		copies = append(copies, OverlayCopy{Overlay: rec.String(), NarHash: ni.NarHash.String(), NarURL: ni.URL, LastPush: rec.LastPush})
	}
	return copies, nil
}

// deleteFromOverlays deletes from every overlay the paths whose hash parts
// are doomed, and the overlay's paths that reference one of them,
// referrers first.
func (c *Collector) deleteFromOverlays(ctx context.Context, doomed []string, report *Report) error {
	records, err := overlay.List(ctx, c.store)
	if err != nil && len(records) == 0 {
		return fmt.Errorf("listing the overlays: %w", err)
	}
	for _, rec := range records {
		view := overlay.Store(c.store, rec.ID)
		narinfos, _, err := overlayNarInfos(ctx, view, rec)
		if err != nil {
			return err
		}
		// The overlay's paths, and which of them reference which hash.
		storePaths := map[string]string{}
		referrers := map[string][]string{}
		for hash, ni := range narinfos {
			storePaths[hash] = ni.StorePath
			for _, ref := range ni.References {
				if len(ref) >= hashLen && ref[:hashLen] != hash {
					referrers[ref[:hashLen]] = append(referrers[ref[:hashLen]], hash)
				}
			}
		}
		// Breadth first from the doomed hashes; deleted farthest first.
		var order []string
		seen := map[string]bool{}
		queue := slices.Clone(doomed)
		for len(queue) > 0 {
			hash := queue[0]
			queue = queue[1:]
			if seen[hash] {
				continue
			}
			seen[hash] = true
			if _, held := storePaths[hash]; held {
				order = append(order, hash)
			}
			queue = append(queue, referrers[hash]...)
		}
		slices.Reverse(order)
		err = func() error {
			c.state.closure.Lock()
			defer c.state.closure.Unlock()
			for _, hash := range order {
				for _, name := range []string{hash + ".narinfo", hash + ".ls"} {
					if err := view.Delete(ctx, name); err != nil {
						return fmt.Errorf("deleting %s from the overlay of %s: %w", name, rec.Key, err)
					}
				}
				report.noteDeleted("overlay " + rec.String() + ": " + storePaths[hash])
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
