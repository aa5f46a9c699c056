package caddynix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// cacheStates holds, per index file, what every configuration serving that
// cache shares: the open index, the lock that keeps deletions and uploads
// apart, and the served times not yet written down. Old and new handlers
// share it across a reload, so the index is opened once per process.
var cacheStates = caddy.NewUsagePool()

// cacheState is the shared state of one cache.
type cacheState struct {
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

// defaultIndexPath is where the index of the cache at root lives unless
// index_file says otherwise: under Caddy's data directory, named after the
// root, so that the cache directory keeps exactly the file:// layout.
func defaultIndexPath(root string) string {
	digest := sha256.Sum256([]byte(root))
	return filepath.Join(caddy.AppDataDir(), "nix_cache", "index-"+hex.EncodeToString(digest[:8])+".db")
}

// joinCacheState returns the shared state of the cache whose index is at
// indexPath; leave it with leaveCacheState.
func joinCacheState(indexPath string) (*cacheState, error) {
	value, _, err := cacheStates.LoadOrNew(indexPath, func() (caddy.Destructor, error) {
		return &cacheState{indexPath: indexPath}, nil
	})
	if err != nil {
		return nil, err
	}
	return value.(*cacheState), nil
}

func leaveCacheState(s *cacheState) error {
	_, err := cacheStates.Delete(s.indexPath)
	return err
}

// Destruct writes down the served times and closes the index once no
// configuration serves the cache.
func (s *cacheState) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.idx == nil {
		return nil
	}
	err := s.flushServedLocked()
	return errors.Join(err, s.idx.Close())
}

// setStore makes store the one records are written to: the running
// configuration's. With collected, the configuration collects the cache,
// and use times are shared with the other nodes of a shared storage.
func (s *cacheState) setStore(store storage.Store, collected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.store, s.collected = store, collected
}

// storage returns the running configuration's storage, or nil.
func (s *cacheState) storage() storage.Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store
}

// index returns the open index, or nil before it has been opened.
func (s *cacheState) index() *index.Index {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idx
}

// open opens the index file, waiting while another process holds it,
// and writes what was recorded meanwhile. A corrupt file is replaced (the
// error says so) and rebuilt by the reconciliation that follows.
func (s *cacheState) open(ctx context.Context, logger *zap.Logger) (*index.Index, error) {
	s.opening.Lock()
	defer s.opening.Unlock()
	if idx := s.index(); idx != nil {
		return idx, nil
	}
	warned := false
	for {
		idx, err := index.Open(s.indexPath, time.Second)
		if errors.Is(err, index.ErrCorrupt) {
			logger.Warn("rebuilding the cache index from the files", zap.String("index_file", s.indexPath), zap.Error(err))
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

// record writes into the index now, or as soon as it is open.
func (s *cacheState) record(logger *zap.Logger, what string, write func(*index.Index) error) {
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
func (s *cacheState) writeUnwritten(idx *index.Index, logger *zap.Logger) {
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

// markServed notes that the path with hash part hash was just served.
func (s *cacheState) markServed(hash string) {
	s.servedMu.Lock()
	if s.served == nil {
		s.served = map[string]time.Time{}
	}
	if _, known := s.served[hash]; known || len(s.served) < maxUnwrittenServed {
		s.served[hash] = time.Now()
	}
	s.servedMu.Unlock()
}

// flushServed writes the served times noted since the last flush.
func (s *cacheState) flushServed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushServedLocked()
}

func (s *cacheState) flushServedLocked() error {
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
		if err := publishUses(ctx, s.store, served); err != nil {
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
func (s *cacheState) noteTouched(keys ...string) {
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
func (s *cacheState) track(on bool) {
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
func (s *cacheState) wasTouched(key string) bool {
	s.servedMu.Lock()
	defer s.servedMu.Unlock()
	return s.touched[key]
}
