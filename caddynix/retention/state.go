package retention

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// State is what every user of one cache in a process shares: the open
// index, the locks that keep deletions and uploads apart, the served times
// not yet written down, and the look at another node's announcement. One
// State serves a cache across configuration reloads.
type State struct {
	indexPath string

	// opening is held while the index is opened, which waits as long as
	// another process holds the file; mu is not, so that uploads and
	// serving never wait on another process.
	opening sync.Mutex

	mu  sync.Mutex
	idx *index.Index
	// unwritten holds what uploads and jobs recorded while the index was
	// not open yet, written as soon as it is.
	unwritten []indexRecord
	// store is the storage of the running configuration, where what must
	// outlive the index is written: use times, run records.
	store storage.Store
	// collected is set when the running configuration collects the
	// cache: only then are use times written for other nodes, whose
	// collections take them in.
	collected bool

	// closure is held for reading by an upload from the moment it checks
	// that a narinfo's NAR and references are stored until its narinfo is
	// committed and noted, and for writing by a collection while it
	// deletes: a path being deleted is never left referenced.
	closure sync.RWMutex
	// collecting is held by the one collection that runs at a time.
	collecting sync.Mutex
	// announced is this process's look at what a collection on another
	// node sharing the storage is about to delete.
	announced announcementView
	// touched is, while a collection runs, what uploads committed or
	// referenced since it planned: hash parts, and NAR URLs.
	touched map[string]bool

	servedMu sync.Mutex
	served   map[string]time.Time
}

// NewState returns the state of the cache whose index file is at
// indexPath; Open opens it.
func NewState(indexPath string) *State {
	return &State{indexPath: indexPath}
}

// NewOpenState returns the state of a cache whose index is already open,
// kept in store, for a command that runs without Caddy.
func NewOpenState(idx *index.Index, store storage.Store) *State {
	return &State{indexPath: idx.Path(), idx: idx, store: store}
}

// IndexPath is where the cache's index file is.
func (s *State) IndexPath() string { return s.indexPath }

// Destruct writes down the served times and closes the index once no
// configuration serves the cache; Open opens it again.
func (s *State) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idx == nil {
		return nil
	}
	err := s.flushServedLocked()
	err = errors.Join(err, s.idx.Close())
	s.idx = nil
	return err
}

// SetStore makes store the one records are written to: the running
// configuration's. With collected, the configuration collects the cache,
// and use times are shared with the other nodes of a shared storage.
func (s *State) SetStore(store storage.Store, collected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store, s.collected = store, collected
}

// Storage returns the running configuration's storage, or nil.
func (s *State) Storage() storage.Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store
}

// WaitIndex returns the open index once it is open, or ctx's error if
// ctx ends first.
func (s *State) WaitIndex(ctx context.Context) (*index.Index, error) {
	// Opening waits on another process and is rare, so a poll is as good
	// as a signal every Open and Destruct would have to renew.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if idx := s.Index(); idx != nil {
			return idx, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// Index returns the open index, or nil before it has been opened.
func (s *State) Index() *index.Index {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idx
}

// Open opens the index file, waiting while another process holds it,
// and writes what was recorded meanwhile. A corrupt file is replaced (the
// error says so) and rebuilt by the reconciliation that follows.
func (s *State) Open(ctx context.Context, logger *zap.Logger) (*index.Index, error) {
	s.opening.Lock()
	defer s.opening.Unlock()
	if idx := s.Index(); idx != nil {
		return idx, nil
	}
	warned := false
	for {
		idx, err := index.Open(s.indexPath, time.Second)
		switch {
		case errors.Is(err, index.ErrCorrupt):
			logger.Warn("rebuilding the cache index from the files", zap.String("index_file", s.indexPath), zap.Error(err))
			err = nil
		case errors.Is(err, index.ErrNotCompacted):
			logger.Warn("the cache index could not be compacted and is used as it is", zap.String("index_file", s.indexPath), zap.Error(err))
			err = nil
		}
		if err == nil {
			s.writeUnwritten(idx, logger)
			return idx, nil
		}
		if !errors.Is(err, index.ErrInUse) {
			return nil, fmt.Errorf("opening the cache index %s: %w", s.indexPath, err)
		}
		if !warned {
			logger.Warn("waiting for another process to release the cache index; meanwhile the cache serves and takes uploads, and records them once it has the index. "+
				"If that process is a `caddy nix-cache` command, it ends on its own; if it is another caddy serving a cache, give each cache its own index_file (or each caddy its own XDG_DATA_HOME)",
				zap.String("index_file", s.indexPath), zap.Error(err))
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// indexRecord is something an upload or a job writes into the index.
type indexRecord struct {
	what  string // for the log: "an upload", "a job"
	write func(*index.Index) error
}

// maxUnwrittenRecords bounds the records kept in memory while the index
// is not open; beyond it they are dropped with an error in the log, and
// the reconciliation at open still indexes the paths, without provenance.
const maxUnwrittenRecords = 1 << 16

// Record writes into the index now, or as soon as it is open.
func (s *State) Record(logger *zap.Logger, what string, write func(*index.Index) error) {
	s.mu.Lock()
	idx := s.idx
	if idx == nil {
		if len(s.unwritten) < maxUnwrittenRecords {
			s.unwritten = append(s.unwritten, indexRecord{what, write})
		} else {
			logger.Error("the cache index has not been open for a long time: not recording "+what, zap.String("index_file", s.indexPath))
		}
	}
	s.mu.Unlock()
	if idx != nil {
		if err := write(idx); err != nil {
			logger.Error("recording "+what+" in the cache index", zap.Error(err))
		}
	}
}

// writeUnwritten writes the records kept while the index was not open, in
// the order they came, then makes idx the open index.
func (s *State) writeUnwritten(idx *index.Index, logger *zap.Logger) {
	for {
		s.mu.Lock()
		records := s.unwritten
		s.unwritten = nil
		if len(records) == 0 {
			s.idx = idx
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, r := range records {
			if err := r.write(idx); err != nil {
				logger.Error("recording "+r.what+" in the cache index", zap.Error(err))
			}
		}
	}
}

// maxUnwrittenServed bounds the served times kept in memory between two
// writes to the index, should the index be unavailable for a long time.
const maxUnwrittenServed = 1 << 20

// MarkServed notes that the path with hash part hash was just served.
func (s *State) MarkServed(hash string) {
	s.servedMu.Lock()
	if s.served == nil {
		s.served = map[string]time.Time{}
	}
	if _, known := s.served[hash]; known || len(s.served) < maxUnwrittenServed {
		s.served[hash] = time.Now()
	}
	s.servedMu.Unlock()
}

// FlushServed writes the served times noted since the last flush.
func (s *State) FlushServed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushServedLocked()
}

func (s *State) flushServedLocked() error {
	if s.idx == nil {
		return nil
	}
	s.servedMu.Lock()
	served := s.served
	s.served = nil
	s.servedMu.Unlock()
	if err := s.idx.MarkServed(served); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.collected {
		if err := PublishUses(ctx, s.store, served); err != nil {
			return err
		}
	}
	// The narinfo keeps its last use too, for when the index is lost.
	recorder, ok := s.store.(storage.UseRecorder)
	if !ok {
		return nil
	}
	for hash, at := range served {
		if err := recorder.RecordUse(ctx, hash+".narinfo", at); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("noting the last use of %s.narinfo: %w", hash, err)
		}
	}
	return nil
}

// noteTouched tells a running collection that an upload committed or
// referenced these hash parts and NAR URLs. Call with closure held for
// reading.
func (s *State) noteTouched(keys ...string) {
	s.servedMu.Lock()
	defer s.servedMu.Unlock()
	if s.touched == nil {
		return
	}
	for _, key := range keys {
		s.touched[key] = true
	}
}

// track starts or stops recording what uploads touch.
func (s *State) track(on bool) {
	s.servedMu.Lock()
	defer s.servedMu.Unlock()
	if on {
		s.touched = map[string]bool{}
	} else {
		s.touched = nil
	}
}

// wasTouched reports whether an upload touched key since track(true).
// Call with closure held for writing.
func (s *State) wasTouched(key string) bool {
	s.servedMu.Lock()
	defer s.servedMu.Unlock()
	return s.touched[key]
}

// AdmitCommit lets an upload commit a narinfo that needs keys (its hash
// part, its NAR file and its references' hash parts): it fails with an
// *AnnouncedError while a collection on another node sharing store is
// about to delete one of them, and otherwise holds off this process's
// deletions until release is called. The context returned ends when the
// look at the announcement it relied on is too old for that collection
// to see the commit; grace is the storage's gc_grace.
func (s *State) AdmitCommit(ctx context.Context, store storage.Store, grace time.Duration, keys []string) (commitCtx context.Context, release func(), err error) {
	commitCtx, cancel, err := s.announced.admit(ctx, store, grace, keys)
	if err != nil {
		return nil, nil, err
	}
	s.closure.RLock()
	return commitCtx, func() {
		s.closure.RUnlock()
		cancel()
	}, nil
}

// Touch tells a running collection that an upload committed or referenced
// these hash parts and NAR files, so that it keeps them. Call it between
// AdmitCommit and its release.
func (s *State) Touch(keys ...string) { s.noteTouched(keys...) }
