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

// sameAs reports whether a and b are one collection's announcement.
func (a *announcement) sameAs(b *announcement) bool {
	return a.Holder == b.Holder && a.Expires.Equal(b.Expires)
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
	a, err := readAnnouncement(ctx, store)
	if err != nil {
		return nil, time.Time{}, err
	}
	v.current, v.fetched = a, fetched
	return a, fetched, nil
}

// readAnnouncement reads what a collection on shared storage is about to
// delete, or nil when none is announced.
func readAnnouncement(ctx context.Context, store storage.Store) (*announcement, error) {
	data, err := storage.ReadAll(ctx, store, AnnouncementName, maxAnnouncementSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading what collections are about to delete: %w", err)
	}
	a := new(announcement)
	if err := json.Unmarshal(data, a); err != nil {
		return nil, fmt.Errorf("reading what collections are about to delete, %s: %w; delete it if no collection runs", AnnouncementName, err)
	}
	a.indexNames()
	return a, nil
}
