package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// When several nodes share a cache's storage, a collection on one node
// cannot take the lock that keeps uploads on the others from committing
// a narinfo whose reference it is deleting. So it announces what it is
// about to delete, and waits out a grace period before it deletes:
//
//   - an upload on any node that needs an announced path or NAR file is
//     refused (409, try again later);
//   - a node looks at the announcement at most grace/4 before an upload
//     checks it, and commits within grace/2 of that look, so an upload
//     that did not see the announcement has landed before the grace ends;
//   - when the grace ends, the collection reads the narinfos again and
//     keeps every announced path and NAR file that one of them needs.
//
// Every node must therefore use the same grace. Only local durations are
// compared, never clocks of two machines, except for the announcement's
// expiry, which only matters when its Collector died.
const (
	// AnnouncementName is the object a collection announces in.
	AnnouncementName = "retention/doomed"
	// DefaultGrace is how long a collection waits between announcing and
	// deleting, unless the storage's gc_grace says otherwise.
	DefaultGrace = time.Minute
	// maxAnnouncementSize bounds the announcement read into memory: a
	// collection of a million paths announces about 40 MB.
	maxAnnouncementSize = maxUsesSize
)

// announcement is what a collection is about to delete.
type announcement struct {
	Holder string        `json:"holder"`
	Grace  time.Duration `json:"grace_ns"`
	// Expires is when the announcement is stale even if it is still
	// there: its collection died before withdrawing it.
	Expires time.Time `json:"expires"`
	// Paths are hash parts, Nars the NAR files' names.
	Paths []string `json:"paths"`
	Nars  []string `json:"nars"`

	// named holds Paths and Nars once the announcement is read.
	named map[string]bool
}

// names reports whether the announcement names key, a hash part or a NAR
// file's name.
func (a *announcement) names(key string) bool { return a.named[key] }

// indexNames makes the set names looks in.
func (a *announcement) indexNames() {
	a.named = make(map[string]bool, len(a.Paths)+len(a.Nars))
	for _, name := range slices.Concat(a.Paths, a.Nars) {
		a.named[name] = true
	}
}

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

// AnnouncedError refuses an upload that needs what a collection on
// another node is about to delete. The upload succeeds when made again
// once the collection is over, about Grace later.
type AnnouncedError struct {
	// Key is the hash part or NAR file the upload needs.
	Key string
	// Holder names the node that collects.
	Holder string
	Grace  time.Duration
}

func (e *AnnouncedError) Error() string {
	return fmt.Sprintf("%s is about to be deleted by a collection (%s) that started before this upload; upload again once it is over, in about %s, and it is uploaded anew",
		e.Key, e.Holder, e.Grace.Round(time.Second))
}

// announcementView is a node's recent look at the announcement of its
// storage, shared by every configuration of the cache.
type announcementView struct {
	mu      sync.Mutex
	fetched time.Time
	current *announcement
}

// admit refuses an upload that needs keys (hash parts and NAR files) while
// a collection on shared storage has announced one of them. It returns
// the context to commit the upload in: it ends when the look it relied on
// is too old for the collection to see the commit.
func (v *announcementView) admit(ctx context.Context, store storage.Store, grace time.Duration, keys []string) (context.Context, context.CancelFunc, error) {
	if _, shared := store.(storage.Leaser); !shared {
		return ctx, func() {}, nil
	}
	a, fetched, err := v.look(ctx, store, grace)
	if err != nil {
		return nil, nil, err
	}
	if a != nil && time.Now().Before(a.Expires) {
		for _, key := range keys {
			if a.names(key) {
				return nil, nil, &AnnouncedError{Key: key, Holder: a.Holder, Grace: a.Grace}
			}
		}
	}
	commitCtx, cancel := context.WithDeadline(ctx, fetched.Add(grace/2))
	return commitCtx, cancel, nil
}

// look returns the announcement, read again when the last look is older
// than grace/4, and when that look was taken.
func (v *announcementView) look(ctx context.Context, store storage.Store, grace time.Duration) (*announcement, time.Time, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if time.Since(v.fetched) < grace/4 {
		return v.current, v.fetched, nil
	}
	fetched := time.Now()
	data, err := storage.ReadAll(ctx, store, AnnouncementName, maxAnnouncementSize)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		v.current = nil
	case err != nil:
		return nil, time.Time{}, fmt.Errorf("reading what collections are about to delete: %w", err)
	default:
		a := new(announcement)
		if err := json.Unmarshal(data, a); err != nil {
			return nil, time.Time{}, fmt.Errorf("reading what collections are about to delete, %s: %w; delete it if no collection runs", AnnouncementName, err)
		}
		a.indexNames()
		v.current = a
	}
	v.fetched = fetched
	return v.current, fetched, nil
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
	now, err := c.idx.Paths()
	if err != nil {
		return nil, err
	}
	// Whatever a path that stays names stays: deletePaths keeps the rest of
	// the closure of what it is told was touched.
	var needed []string
	for hash, p := range now {
		if doomed.names(hash) {
			continue
		}
		if doomed.names(p.NarURL) {
			needed = append(needed, p.NarURL)
		}
		for _, ref := range p.References {
			if doomed.names(ref) {
				needed = append(needed, ref)
			}
		}
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
