package actionscache

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"go.uber.org/zap"
)

// An entry is stored as two objects: its archive, entries/<id>, and its
// record, entries/<id>.json, written after the archive as the commit point.
const entriesDir = "entries"

// entry is one saved cache entry.
type entry struct {
	ID         int64     `json:"id"`
	Repository string    `json:"repository"`
	Ref        string    `json:"ref"`
	Key        string    `json:"key"`
	Version    string    `json:"version"`
	Size       int64     `json:"size"`
	Created    time.Time `json:"created"`
	// Used is when a job last restored the entry (or its creation).
	Used time.Time `json:"used"`
}

func archiveName(id int64) string { return entriesDir + "/" + strconv.FormatInt(id, 10) }
func recordName(id int64) string  { return archiveName(id) + ".json" }

// stores holds the entries of each cache root, shared by the handler
// instances of successive configurations.
var stores = caddy.NewUsagePool()

// entryStore is the entries of one cache root, their records in memory,
// and the uploads in progress.
type entryStore struct {
	store  storage.Store
	logger *zap.Logger
	label  string

	// maxSize is the running configuration's limit per repository, and
	// lookups count hits and misses, both for the status page.
	maxSize atomic.Int64
	lookups lookupCounts

	mu        sync.Mutex
	entries   map[int64]*entry
	pending   map[int64]*reservation
	lastPrune time.Time
}

func (s *entryStore) Destruct() error {
	s.mu.Lock()
	for id, res := range s.pending {
		res.upload.Abort()
		delete(s.pending, id)
	}
	s.mu.Unlock()
	return s.store.Close()
}

// load reads every entry record, and removes archives without one (left
// by a process that died between the two writes) and the temporary files
// of uploads that died.
func (s *entryStore) load(ctx context.Context) error {
	if sweeper, ok := s.store.(storage.Sweeper); ok {
		if _, err := sweeper.RemoveAbandoned(ctx); err != nil {
			s.logger.Warn("removing abandoned uploads", zap.Error(err))
		}
	}
	infos, err := s.store.List(ctx, entriesDir)
	if err != nil {
		return fmt.Errorf("listing the cache entries: %w", err)
	}
	archives := map[int64]bool{}
	for _, info := range infos {
		base := path.Base(info.Name)
		if idText, ok := strings.CutSuffix(base, ".json"); ok {
			id, err := strconv.ParseInt(idText, 10, 64)
			if err != nil {
				continue
			}
			e, err := s.readRecord(ctx, id)
			if err != nil {
				s.logger.Warn("skipping an unreadable cache entry record", zap.String("record", info.Name), zap.Error(err))
				continue
			}
			s.entries[id] = e
			continue
		}
		if id, err := strconv.ParseInt(base, 10, 64); err == nil {
			archives[id] = true
		}
	}
	for id := range archives {
		if s.entries[id] == nil {
			_ = s.store.Delete(ctx, archiveName(id))
		}
	}
	s.mu.Lock()
	entries, bytes := s.usageLocked()
	s.mu.Unlock()
	storedEntries.WithLabelValues(s.label).Set(float64(entries))
	storedBytes.WithLabelValues(s.label).Set(float64(bytes))
	return nil
}

func (s *entryStore) readRecord(ctx context.Context, id int64) (*entry, error) {
	data, err := storage.ReadAll(ctx, s.store, recordName(id), 64<<10)
	if err != nil {
		return nil, err
	}
	e := new(entry)
	if err := json.Unmarshal(data, e); err != nil {
		return nil, err
	}
	if e.ID != id || e.Repository == "" || e.Key == "" {
		return nil, errors.New("the record does not describe its entry")
	}
	return e, nil
}

// writeRecord stores e's record, replacing an older one.
func (s *entryStore) writeRecord(ctx context.Context, e *entry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	up, err := s.store.Create(ctx, recordName(e.ID))
	if err != nil {
		return err
	}
	if _, err := up.Write(data); err != nil {
		up.Abort()
		return err
	}
	return up.Commit()
}

// match finds the entry a job restores for keys and version: in each of
// the scope's read refs in turn, the first key that matches exactly, else
// the newest entry whose key starts with it. This is GitHub's rule.
func (s *entryStore) match(scope Scope, keys []string, version string) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ref := range scope.ReadRefs {
		var candidates []*entry
		for _, e := range s.entries {
			if e.Repository == scope.Repository && e.Ref == ref && e.Version == version {
				candidates = append(candidates, e)
			}
		}
		// Newest first, so that the first prefix match is the newest.
		slices.SortFunc(candidates, func(a, b *entry) int { return b.Created.Compare(a.Created) })
		for _, key := range keys {
			if i := slices.IndexFunc(candidates, func(e *entry) bool { return e.Key == key }); i >= 0 {
				return candidates[i]
			}
			if i := slices.IndexFunc(candidates, func(e *entry) bool { return strings.HasPrefix(e.Key, key) }); i >= 0 {
				return candidates[i]
			}
		}
	}
	return nil
}

// existsLocked reports whether the repository has an entry, or an upload in
// progress, for key and version on ref; s.mu is held.
func (s *entryStore) existsLocked(repository, ref, key, version string) bool {
	for _, e := range s.entries {
		if e.Repository == repository && e.Ref == ref && e.Key == key && e.Version == version {
			return true
		}
	}
	for _, r := range s.pending {
		if r.entry.Repository == repository && r.entry.Ref == ref && r.entry.Key == key && r.entry.Version == version {
			return true
		}
	}
	return false
}

// get returns the entry id, if it is stored.
func (s *entryStore) get(id int64) (*entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return nil, false
	}
	copied := *e
	return &copied, true
}

// markUsed records that a job restores the entry, for retention.
func (s *entryStore) markUsed(ctx context.Context, id int64, now time.Time) {
	s.mu.Lock()
	e, ok := s.entries[id]
	if !ok {
		s.mu.Unlock()
		return
	}
	e.Used = now
	copied := *e
	s.mu.Unlock()
	if err := s.writeRecord(ctx, &copied); err != nil {
		s.logger.Warn("recording the use of a cache entry", zap.Int64("entry", id), zap.Error(err))
	}
}

// usageLocked sums the entries and bytes stored, for the metrics; s.mu is
// held.
func (s *entryStore) usageLocked() (entries int, bytes int64) {
	for _, e := range s.entries {
		entries++
		bytes += e.Size
	}
	return entries, bytes
}

// retention is how long and how much the cache keeps.
type retention struct {
	maxSize int64
	maxAge  time.Duration
}

// prune deletes the entries unused for longer than maxAge, then, in each
// repository over maxSize, the least recently used ones until it fits.
func (s *entryStore) prune(ctx context.Context, keep retention, now time.Time) {
	s.mu.Lock()
	s.lastPrune = now
	byRepository := map[string][]*entry{}
	var doomed []*entry
	for _, e := range s.entries {
		if keep.maxAge > 0 && now.Sub(e.Used) > keep.maxAge {
			doomed = append(doomed, e)
			continue
		}
		byRepository[e.Repository] = append(byRepository[e.Repository], e)
	}
	for _, entries := range byRepository {
		var total int64
		for _, e := range entries {
			total += e.Size
		}
		if total <= keep.maxSize {
			continue
		}
		slices.SortFunc(entries, func(a, b *entry) int {
			return cmp.Or(a.Used.Compare(b.Used), cmp.Compare(a.ID, b.ID))
		})
		for _, e := range entries {
			if total <= keep.maxSize {
				break
			}
			doomed = append(doomed, e)
			total -= e.Size
		}
	}
	for _, e := range doomed {
		delete(s.entries, e.ID)
	}
	entries, bytes := s.usageLocked()
	s.mu.Unlock()
	storedEntries.WithLabelValues(s.label).Set(float64(entries))
	storedBytes.WithLabelValues(s.label).Set(float64(bytes))

	for _, e := range doomed {
		// The record goes first: without it the archive is not an entry.
		err := errors.Join(s.store.Delete(ctx, recordName(e.ID)), s.store.Delete(ctx, archiveName(e.ID)))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.logger.Error("deleting an expired cache entry", zap.Int64("entry", e.ID), zap.Error(err))
			continue
		}
		evictedEntries.WithLabelValues(s.label).Inc()
		s.logger.Debug("cache entry evicted", zap.Int64("entry", e.ID), zap.String("repository", e.Repository),
			zap.String("key", e.Key), zap.Time("used", e.Used))
	}
}

// pruneSoon prunes unless that was done in the last minute, so that entries
// expire while the cache is used without a background task.
func (s *entryStore) pruneSoon(ctx context.Context, keep retention, now time.Time) {
	s.mu.Lock()
	due := now.Sub(s.lastPrune) >= time.Minute
	s.mu.Unlock()
	if due {
		s.prune(ctx, keep, now)
	}
}
