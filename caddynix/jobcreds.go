package caddynix

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
	"go.uber.org/zap"
)

// namedCaches holds, per cache name, what the configurations serving that
// cache share: the per-job upload credentials a runner issued. Old and new
// handler instances share it across a reload, so a credential issued before
// a reload still works after it.
var namedCaches = caddy.NewUsagePool()

// sharedCache is the state of one named cache shared across configurations.
type sharedCache struct {
	// state is the cache's index and locks, where jobs are recorded.
	state      *retention.State
	logger     *zap.Logger
	mu         sync.RWMutex
	url        string
	publicKeys []string
	// jobTokens are the live job credentials, with the job each was
	// issued to (nil when the runner did not say).
	jobTokens map[[sha256.Size]byte]*index.Job
}

// Destruct is called when no configuration serves the cache any more.
func (s *sharedCache) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.jobTokens)
	return nil
}

// allows reports whether token is a live job credential, and its job.
func (s *sharedCache) allows(token string) (*index.Job, bool) {
	digest := sha256.Sum256([]byte(token))
	s.mu.RLock()
	defer s.mu.RUnlock()
	job, ok := s.jobTokens[digest]
	return job, ok
}

// CacheAccess is what a runner needs to let a job use a cache served by a
// nix_cache handler in the same Caddy: where it is, which keys sign it, and
// a way to issue upload credentials valid only until they are revoked.
type CacheAccess struct {
	// URL is the cache's base URL, for substituters and `nix copy --to`.
	URL string
	// PublicKeys are the keys to trust for the cache, for trusted-public-keys:
	// its own, and those of upstreams whose paths it passes on unsigned.
	PublicKeys []string
	shared     *sharedCache
}

// Job is the CI job a credential is issued to. The paths it uploads are
// recorded with it (`caddy nix-cache path-info` shows them), and the paths
// of a repository's last successful default-branch runs can be kept.
type Job = index.Job

// IssueJobCredential returns a new upload token for job that the cache
// accepts until finish is called with the job's outcome. keepRuns is how
// many successful default-branch runs of the job's repository retention
// keeps (0: none).
func (a *CacheAccess) IssueJobCredential(job *Job, keepRuns int) (token string, finish func(succeeded bool)) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	token = hex.EncodeToString(raw)
	digest := sha256.Sum256([]byte(token))
	a.shared.mu.Lock()
	a.shared.jobTokens[digest] = job
	a.shared.mu.Unlock()
	a.recordJob(job, func(_ storage.Store, idx *index.Index) error { return idx.StartJob(job, keepRuns, time.Now()) })
	var once sync.Once
	return token, func(succeeded bool) {
		once.Do(func() {
			a.shared.mu.Lock()
			delete(a.shared.jobTokens, digest)
			a.shared.mu.Unlock()
			a.recordJob(job, func(store storage.Store, idx *index.Index) error {
				if err := idx.FinishJob(job, succeeded, time.Now()); err != nil {
					return err
				}
				// The run's record outlives the index.
				return retention.SaveRun(context.Background(), store, idx, job)
			})
		})
	}
}

// recordJob writes what a job did into the cache's index, when the job
// is known and the index is open.
func (a *CacheAccess) recordJob(job *Job, write func(storage.Store, *index.Index) error) {
	a.shared.mu.RLock()
	state, logger := a.shared.state, a.shared.logger
	a.shared.mu.RUnlock()
	if job == nil || state == nil {
		return
	}
	state.Record(logger, "a job", func(idx *index.Index) error {
		store := state.Storage()
		if store == nil {
			return nil
		}
		return write(store, idx)
	})
}

// ErrNoSuchCache is returned by LookupCache for a name no handler serves.
var ErrNoSuchCache = errors.New("no nix_cache with that name is configured")

// LookupCache finds the cache that a nix_cache handler named name serves in
// this process. The handler must have uploads enabled and a url set.
func LookupCache(name string) (*CacheAccess, error) {
	shared, ok := caddyutil.PoolValue[*sharedCache](namedCaches, name)
	if !ok {
		return nil, fmt.Errorf("nix_cache %q: %w (give the handler `name %s`)", name, ErrNoSuchCache, name)
	}
	shared.mu.RLock()
	defer shared.mu.RUnlock()
	if shared.url == "" {
		return nil, fmt.Errorf("nix_cache %q has no url: set `url` to the address jobs reach it at, e.g. https://cache.example.org", name)
	}
	if shared.jobTokens == nil {
		return nil, fmt.Errorf("nix_cache %q does not accept uploads: add an `upload` block", name)
	}
	return &CacheAccess{URL: shared.url, PublicKeys: append([]string(nil), shared.publicKeys...), shared: shared}, nil
}
