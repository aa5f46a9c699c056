package retention

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// Watch returns what tells a node of the changes to store, storage that
// several nodes share, that matter to what it keeps in memory of store's
// objects, such as signed narinfos.
//
// The one change another node makes to an object that is there is a
// collection deleting it, and the collection announces it a grace before
// (see settle). So the changes returned read the announcement again once
// it is grace/4 old, as they are drained; report what it names as changed
// as soon as they see it; and keep it Announced while it stands. A look
// that fails leaves the last one in use until it is grace/2 old; from then
// on every object counts as announced, and the next look that succeeds
// reports that anything may have changed. An object no collection
// deletes, deleted behind every node's back, is trusted for a grace at
// most.
func Watch(store storage.Store, grace time.Duration, logger *zap.Logger) storage.Changes {
	return &announcedChanges{store: store, grace: grace, logger: logger}
}

// announcedChanges are the changes to shared storage as its announcements
// tell them.
type announcedChanges struct {
	store  storage.Store
	grace  time.Duration
	logger *zap.Logger
	// looking is held by the one Drain that reads the announcement.
	looking sync.Mutex
	// failing is set, under looking, while looks fail.
	failing bool
	view    atomic.Pointer[announcedView]
	closed  atomic.Bool
}

// announcedView is a look at the announcement: when it began, and what it
// found, nil for none.
type announcedView struct {
	began   time.Time
	current *announcement
}

// Drain reads the announcement again when the last look is grace/4 old and
// no other Drain is reading it, and reports what a new announcement names.
func (c *announcedChanges) Drain(changed func(name string)) error {
	if c.closed.Load() {
		return errors.New("the watch of the storage's announcements is closed")
	}
	if v := c.view.Load(); v != nil && time.Since(v.began) < c.grace/4 {
		return nil
	}
	if !c.looking.TryLock() {
		return nil
	}
	defer c.looking.Unlock()
	last := c.view.Load()
	if last != nil && time.Since(last.began) < c.grace/4 {
		return nil
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), c.grace/4)
	defer cancel()
	a, err := readAnnouncement(ctx, c.store)
	if err != nil {
		if !c.failing {
			c.logger.Warn("looking for collections on other nodes; until a look succeeds, narinfos are read from the storage for every request once the last look is half a gc_grace old",
				zap.Error(err), zap.Duration("gc_grace", c.grace))
			c.failing = true
		}
		return nil
	}
	if c.failing {
		c.logger.Info("looking for collections on other nodes succeeds again")
		c.failing = false
	}
	// The new view first: from here on, what it announces is not trusted
	// again by anything built after the changes reported below.
	c.view.Store(&announcedView{began: began, current: a})
	switch {
	case last == nil || began.Sub(last.began) > c.grace/2:
		// An announcement may have come and gone since the last look.
		changed("")
	case a != nil && (last.current == nil || !a.sameAs(last.current)):
		for _, hash := range a.Paths {
			changed(hash + ".narinfo")
			changed(hash + ".ls")
		}
		for _, nar := range a.Nars {
			changed(nar)
		}
	}
	return nil
}

// Announced reports whether the announcement names the object name, a
// narinfo, listing or NAR file, or whether the last look is too old to
// tell.
func (c *announcedChanges) Announced(name string) bool {
	v := c.view.Load()
	if v == nil || time.Since(v.began) > c.grace/2 {
		return true
	}
	if v.current == nil {
		return false
	}
	hash, _, _ := strings.Cut(name, ".")
	return v.current.names(hash) || v.current.names(name)
}

// TrustFor is the grace.
func (c *announcedChanges) TrustFor() time.Duration { return c.grace }

// Close ends the watch.
func (c *announcedChanges) Close() error {
	c.closed.Store(true)
	return nil
}

// Interface guards
var (
	_ storage.Changes    = (*announcedChanges)(nil)
	_ storage.Forewarned = (*announcedChanges)(nil)
)
