// Package sources is where a nix_cache finds what its own storage does not
// hold: a live Nix store, read without Nix (narinfo from its database,
// NARs, listings and logs made from its files), then upstream caches,
// whose narinfo is served only with a trusted signature and whose NARs
// are checked on the way; what upstreams serve can be kept in the cache
// (pull-through), whole closures at a time, committed as uploads are.
//
// The order is fixed: the cache's own storage answers first (the handler
// asks it), then the live store, then each upstream in the order
// configured. A source that fails is logged; a failing live store answers
// 503 (an httpx.StatusError), a failing upstream is passed over.
//
// It serves HTTP bodies but knows nothing of Caddy: a miss is ErrNotFound,
// and the handler turns errors into answers.
package sources

import (
	"context"
	"sync"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// Options are a cache's sources.
type Options struct {
	// Store is the cache's own storage, where kept paths go.
	Store storage.Store
	// StoreDir is the store directory the cache's paths are named in.
	StoreDir string
	// Keys sign what the live store serves, and upstreams' narinfo with
	// Sign.
	Keys   []signature.SecretKey
	Logger *zap.Logger
	// Live is the live store, if any.
	Live *LiveOptions
	// Upstreams are asked in order after the live store.
	Upstreams []UpstreamOptions
	// Keeper commits what is kept of upstreams with Keep.
	Keeper *upload.Receiver
}

// Sources are a cache's live store and upstreams.
type Sources struct {
	store        storage.Store
	storeDir     string
	keys         []signature.SecretKey
	logger       *zap.Logger
	live         *liveStore
	upstreams    []*upstream
	upstreamNars *boundedMap[string, upstreamNarinfo]
	keeper       *upload.Receiver
	// ctx bounds the background keeps of upstream closures, which run one
	// at a time; keeping counts them.
	ctx       context.Context
	keeping   sync.WaitGroup
	keepSlots *semaphore.Weighted
}

// New opens the sources opts describe. Background keeps run until ctx
// ends; Close then waits for them.
func New(ctx context.Context, opts Options) (*Sources, error) {
	s := &Sources{
		store: opts.Store, storeDir: opts.StoreDir, keys: opts.Keys, logger: opts.Logger, keeper: opts.Keeper,
		upstreamNars: newBoundedMap[string, upstreamNarinfo](maxUpstreamNarinfos),
		ctx:          ctx, keepSlots: semaphore.NewWeighted(1),
	}
	if opts.Live != nil {
		live, err := openLiveStore(ctx, *opts.Live, opts.StoreDir)
		if err != nil {
			return nil, err
		}
		s.live = live
		if err := live.db.Watched(); err != nil {
			s.logger.Info("every live store request asks the Nix database whether it changed, because writes to it cannot be watched", zap.Error(err))
		}
	}
	for _, cfg := range opts.Upstreams {
		u, err := newUpstream(cfg)
		if err != nil {
			_ = s.Close()
			return nil, err
		}
		s.upstreams = append(s.upstreams, u)
	}
	return s, nil
}

// Any reports whether there is a live store or an upstream.
func (s *Sources) Any() bool { return s.live != nil || len(s.upstreams) > 0 }

// Names names the sources, in the order they answer.
func (s *Sources) Names() []string {
	var names []string
	if s.live != nil {
		names = append(names, "the live store "+s.live.dir)
	}
	for _, u := range s.upstreams {
		names = append(names, "the upstream cache "+u.base)
	}
	return names
}

// PassedOnKeys are the keys of the upstreams whose narinfo is passed on
// without the cache's signature, which clients must trust too.
func (s *Sources) PassedOnKeys() []string {
	var keys []string
	for _, u := range s.upstreams {
		if !u.sign {
			for _, key := range u.keys {
				keys = append(keys, key.String())
			}
		}
	}
	return keys
}

// Wait waits for the background keeps.
func (s *Sources) Wait() { s.keeping.Wait() }

// Close waits for the background keeps, whose context must be done, and
// closes the live store's database.
func (s *Sources) Close() error {
	s.keeping.Wait()
	for _, u := range s.upstreams {
		u.close()
	}
	if s.live != nil {
		err := s.live.close()
		s.live = nil
		return err
	}
	return nil
}
