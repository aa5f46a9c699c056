package retention

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// Collect brings the index in line with the files, plans by pol and, unless
// dryRun, deletes.
func (c *Collector) Collect(ctx context.Context, pol Policy, dryRun bool) (*Report, error) {
	// One collection at a time: a second waits, and then finds little to do.
	c.state.collecting.Lock()
	defer c.state.collecting.Unlock()
	start := time.Now()
	report := &Report{DryRun: dryRun, MaxSize: pol.MaxSize}
	if err := c.state.FlushServed(); err != nil {
		return nil, fmt.Errorf("writing served times: %w", err)
	}
	if dryRun {
		return report, c.plannedCollect(ctx, pol, dryRun, report, start)
	}
	return report, c.withLease(ctx, func() error { return c.plannedCollect(ctx, pol, dryRun, report, start) })
}

// plannedCollect is collect's work: index, plan, delete.
func (c *Collector) plannedCollect(ctx context.Context, pol Policy, dryRun bool, report *Report, start time.Time) error {
	// Uploads from here on are seen by the deletions below.
	c.state.track(true)
	defer c.state.track(false)

	if err := c.gatherUses(ctx, !dryRun); err != nil {
		return err
	}
	var err error
	if report.Reconciled, err = c.sync(ctx, false); err != nil {
		return fmt.Errorf("indexing the cache: %w", err)
	}
	cat, err := loadCatalog(c.idx)
	if err != nil {
		return err
	}
	roots, forgotten, err := c.roots(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	overlays, err := c.scanOverlays(ctx)
	if err != nil {
		return err
	}
	droppedOverlays, keptOverlays := planOverlays(overlays, cat.size(), pol, now)
	roots = append(roots, overlayRoots(keptOverlays, cat)...)
	cachePol := pol
	var overlayBytes int64
	for _, o := range keptOverlays {
		overlayBytes += o.Bytes
	}
	if pol.MaxSize > 0 {
		cachePol.MaxSize = pol.MaxSize - overlayBytes
	}
	plan := planCollection(cat, roots, cachePol, now)
	report.Paths, report.Protected = cat.len(), plan.protected
	// Sizes are of the whole cache, overlays included, as max_size is.
	report.SizeBefore = plan.sizeBefore
	for _, o := range overlays {
		report.SizeBefore += o.Bytes
	}
	report.SizeAfter = report.SizeBefore

	orphans, err := c.orphanNars(ctx, cat, now.Add(-pol.MinAge))
	if err != nil {
		return err
	}
	// A NAR an overlay's narinfo names is no orphan: the overlay's upload
	// found it stored and did not store it again.
	overlayNars := map[string]bool{}
	for _, o := range keptOverlays {
		for _, nar := range o.Nars {
			overlayNars[nar] = true
		}
	}
	orphans = slices.DeleteFunc(orphans, func(o storage.Info) bool { return overlayNars[o.Name] })
	if dryRun {
		listed := plan.delete[:min(len(plan.delete), listedDeletions)]
		err := c.eachRecord(cat, listed, func(p *index.Path) {
			report.Deleted = append(report.Deleted, p.StorePath)
		})
		if err != nil {
			return err
		}
		report.DeletedPaths = len(plan.delete)
		report.Nars = len(plan.nars) + len(orphans)
		report.FreedBytes = plan.sizeBefore - plan.sizeAfter
		report.SizeAfter = report.SizeBefore - report.FreedBytes
		for _, o := range droppedOverlays {
			report.Overlays = append(report.Overlays, o.String())
			report.FreedBytes += o.Bytes
			report.SizeAfter -= o.Bytes
		}
		for _, o := range orphans {
			report.Orphans = append(report.Orphans, o.Name)
			report.FreedBytes += o.Size
		}
		report.Duration = time.Since(start)
		return nil
	}

	if err := c.forgetRuns(ctx, forgotten); err != nil {
		return err
	}
	// Only a collection on shared storage announces what it deletes.
	var hashes, nars []string
	if c.lease != nil {
		if hashes, nars, err = c.names(cat, plan.delete, plan.nars); err != nil {
			return err
		}
		for _, o := range droppedOverlays {
			hashes = append(hashes, OverlayKey(o.ID))
		}
	}
	withdraw, err := c.settle(ctx, hashes, nars, orphans)
	if err != nil {
		return err
	}
	defer withdraw()
	if err := c.keepWhatOverlaysGained(ctx, overlays, droppedOverlays); err != nil {
		return err
	}
	overlaysFreed, err := c.dropOverlays(ctx, droppedOverlays, report)
	if err != nil {
		return err
	}
	if err := c.deleteOrphans(ctx, orphans, report); err != nil {
		return err
	}
	freed, err := c.deletePaths(ctx, cat, plan.delete, plan.nars, report)
	report.SizeAfter = report.SizeBefore - overlaysFreed - freed
	if err != nil {
		return err
	}
	report.Duration = time.Since(start)
	c.record(report)
	return nil
}

// resolveBatch is how many records eachRecord reads under one snapshot of
// the index.
const resolveBatch = 4096

// eachRecord calls fn with the index's record of each of the paths ids
// of cat, in their order, holding a few thousand records at a time. A
// path whose record is gone since the catalog was read is left out.
func (c *Collector) eachRecord(cat *catalog, ids []uint32, fn func(*index.Path)) error {
	for start := 0; start < len(ids); start += resolveBatch {
		batch, err := c.records(cat, ids[start:min(start+resolveBatch, len(ids))])
		if err != nil {
			return err
		}
		for _, r := range batch {
			fn(r.Path)
		}
	}
	return nil
}

// record is the index's record of the path id of a catalog.
type record struct {
	id uint32
	*index.Path
}

// records reads the index's records of the paths ids of cat, leaving out
// those gone since the catalog was read.
func (c *Collector) records(cat *catalog, ids []uint32) ([]record, error) {
	out := make([]record, 0, len(ids))
	err := c.idx.Read(func(s index.Snapshot) error {
		for _, id := range ids {
			p, ok, err := s.Get(cat.hash(id))
			if err != nil {
				return err
			}
			if ok {
				out = append(out, record{id, &p})
			}
		}
		return nil
	})
	return out, err
}

// names are the hash parts of the paths deleted, and the names of the
// NAR files of the paths nars.
func (c *Collector) names(cat *catalog, deleted, nars []uint32) (hashes, narNames []string, err error) {
	for _, id := range deleted {
		hashes = append(hashes, cat.hash(id))
	}
	err = c.eachRecord(cat, nars, func(p *index.Path) { narNames = append(narNames, p.NarURL) })
	return hashes, narNames, err
}

// roots are the hash parts of the paths whose closures are kept: the pins
// and the paths of the kept CI runs. It also returns the runs that can no
// longer be kept, which the index has forgotten.
func (c *Collector) roots(ctx context.Context) (roots []string, forgotten []*index.Run, err error) {
	pins, err := c.Pins(ctx)
	if err != nil {
		return nil, nil, err
	}
	for _, pin := range pins {
		roots = append(roots, pin.Hash)
	}
	kept, forgotten, err := c.idx.KeptRuns()
	if err != nil {
		return nil, nil, err
	}
	for _, run := range kept {
		roots = append(roots, run.Paths...)
	}
	return roots, forgotten, nil
}

// orphanNars lists the NAR files that no indexed narinfo names and that
// are older than before: left by uploads whose narinfo never came.
func (c *Collector) orphanNars(ctx context.Context, cat *catalog, before time.Time) ([]storage.Info, error) {
	named := slices.Clone(cat.narKeys)
	slices.Sort(named)
	var orphans []storage.Info
	err := storage.Walk(ctx, c.walking(), "nar", func(nar storage.Info) error {
		if _, ok := slices.BinarySearch(named, index.NarKey(nar.Name)); !ok && nar.ModTime.Before(before) {
			orphans = append(orphans, nar)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing nar/: %w", err)
	}
	slices.SortFunc(orphans, func(a, b storage.Info) int { return strings.Compare(a.Name, b.Name) })
	return orphans, nil
}

func (c *Collector) deleteOrphans(ctx context.Context, orphans []storage.Info, report *Report) error {
	c.state.closure.Lock()
	defer c.state.closure.Unlock()
	for _, o := range orphans {
		if c.state.wasTouched(o.Name) {
			continue
		}
		if err := c.store.Delete(ctx, o.Name); err != nil {
			return fmt.Errorf("deleting orphaned NAR %s: %w", o.Name, err)
		}
		report.Orphans = append(report.Orphans, o.Name)
		report.Nars++
		report.FreedBytes += o.Size
	}
	return nil
}

// deleteBatch is how many paths are deleted under one hold of the closure
// lock, so that uploads wait for a short while at most.
const deleteBatch = 256

// deletePaths deletes the paths ids of cat, given referrers first, and
// the NAR files of the paths nars, each once the path naming it last is
// deleted. A path an upload committed or referenced since the plan is
// kept, with everything it references and the NAR files they name. It
// returns the bytes it freed.
func (c *Collector) deletePaths(ctx context.Context, cat *catalog, ids, nars []uint32, report *Report) (freed int64, err error) {
	defer func() { report.FreedBytes += freed }()
	releases := make([]bool, cat.len())
	for _, id := range nars {
		releases[id] = true
	}
	kept := map[string]bool{}
	keptNars := map[string]bool{}
	// The index forgets what is gone at the end: should the process die
	// before, reconciling with the files does it.
	var gone index.Deletions
	defer func() {
		if err := c.idx.Forget(&gone); err != nil {
			c.logger.Error("removing deleted paths from the index; the next collection does", zap.Error(err))
		}
	}()
	c.pace.start()
	for start := 0; start < len(ids); start += deleteBatch {
		if start > 0 {
			c.pace.pause(ctx)
		}
		batch, err := c.records(cat, ids[start:min(start+deleteBatch, len(ids))])
		if err != nil {
			return freed, err
		}
		if err := c.lease.renew(ctx); err != nil {
			return freed, err
		}
		err = func() error {
			c.state.closure.Lock()
			defer c.state.closure.Unlock()
			for _, p := range batch {
				if kept[p.Hash] || c.state.wasTouched(p.Hash) {
					report.KeptByUploads++
					keptNars[p.NarURL] = true
					for _, ref := range p.References {
						kept[ref] = true
					}
					continue
				}
				// The narinfo first: from then on, the path is not in
				// the cache, whatever is left of it.
				if err := c.store.Delete(ctx, p.Hash+".narinfo"); err != nil {
					return fmt.Errorf("deleting %s: %w", p.StorePath, err)
				}
				if err := c.store.Delete(ctx, p.Hash+".ls"); err != nil {
					return fmt.Errorf("deleting the listing of %s: %w", p.StorePath, err)
				}
				gone.Add(p.Path)
				report.noteDeleted(p.StorePath)
				freed += p.NarinfoSize
			}
			// A NAR file goes after the narinfo that named it last.
			for _, p := range batch {
				if !releases[p.id] || keptNars[p.NarURL] || c.state.wasTouched(p.NarURL) {
					continue
				}
				if err := c.store.Delete(ctx, p.NarURL); err != nil {
					return fmt.Errorf("deleting NAR %s: %w", p.NarURL, err)
				}
				report.Nars++
				freed += p.FileSize
			}
			return nil
		}()
		if err != nil {
			return freed, err
		}
	}
	return freed, nil
}

// record logs a collection and counts it in the metrics.
func (c *Collector) record(report *Report) {
	c.metrics.Collected(c.cache, report)
	fields := []zap.Field{
		zap.String("cache", c.cache),
		zap.Int("paths", report.Paths),
		zap.Int("deleted_paths", report.DeletedPaths),
		zap.Int("deleted_nars", report.Nars),
		zap.Int64("freed_bytes", report.FreedBytes),
		zap.Int64("size_bytes", report.SizeAfter),
		zap.Duration("took", report.Duration),
	}
	if report.KeptByUploads > 0 {
		fields = append(fields, zap.Int("kept_for_uploads", report.KeptByUploads))
	}
	if report.MaxSize > 0 && report.SizeAfter > report.MaxSize {
		c.logger.Warn("the cache stays over max_size: pinned closures, closures of kept CI runs and paths younger than min_age take what is left",
			append(fields, zap.Int64("max_size", report.MaxSize), zap.Int64("protected_bytes", report.Protected))...)
		return
	}
	if report.DeletedPaths > 0 || report.Nars > 0 {
		c.logger.Info("collected the cache", fields...)
	} else {
		c.logger.Debug("collected the cache: nothing to delete", fields...)
	}
}
