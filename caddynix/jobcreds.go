package caddynix

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
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
	// tiers decide where each job's pushes go.
	tiers tierRule
	// overlayPublicKey is what jobs of the ref tier trust beside the
	// cache's keys: the key their overlay is signed with.
	overlayPublicKey string
	// jobTokens are the live job credentials.
	jobTokens map[[sha256.Size]byte]issuedCredential
}

// issuedCredential is what a live job credential stands for: the job it
// was issued to, and the overlay its pushes go to (nil: the cache
// proper).
type issuedCredential struct {
	job     *index.Job
	overlay *overlay.Key
	// stored tallies the paths the job stored with it.
	stored *pushTally
}

// pushTally is what a job credential stored: the store paths whose
// narinfo it put, and their NAR sizes.
type pushTally struct {
	mu       sync.Mutex
	paths    []string
	narBytes int64
}

func (t *pushTally) add(storePath string, narSize int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.paths = append(t.paths, storePath)
	t.narBytes += narSize
}

// Destruct is called when no configuration serves the cache any more.
func (s *sharedCache) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.jobTokens)
	return nil
}

// allows reports whether token is a live job credential, and what for.
func (s *sharedCache) allows(token string) (issuedCredential, bool) {
	digest := sha256.Sum256([]byte(token))
	s.mu.RLock()
	defer s.mu.RUnlock()
	cred, ok := s.jobTokens[digest]
	return cred, ok
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

// JobCredential is an upload credential issued to a job.
type JobCredential struct {
	Token string
	// PublicKeys are the keys the job trusts for the cache: the cache's,
	// and for a job of the ref tier its overlay's.
	PublicKeys []string
	// Overlay names, for a job of the ref tier, the overlay its pushes go
	// to (repository@ref); empty for the trusted tier.
	Overlay string
	stored  *pushTally
}

// Stored returns the store paths whose narinfo the job put with the
// credential so far, and the sum of their NAR sizes.
func (c JobCredential) Stored() (paths []string, narBytes int64) {
	if c.stored == nil {
		return nil, 0
	}
	c.stored.mu.Lock()
	defer c.stored.mu.Unlock()
	return slices.Clone(c.stored.paths), c.stored.narBytes
}

// IssueJobCredential returns a new upload credential for job that the
// cache accepts until finish is called with the job's outcome. Its tier
// follows the cache's rule: the default branch and trusted_refs push into
// the cache proper, every other job into its ref's overlay. keepRuns is
// how many successful default-branch runs of the job's repository
// retention keeps (0: none).
func (a *CacheAccess) IssueJobCredential(job *Job, keepRuns int) (cred JobCredential, finish func(succeeded bool)) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	cred = JobCredential{Token: hex.EncodeToString(raw), PublicKeys: slices.Clone(a.PublicKeys), stored: new(pushTally)}
	digest := sha256.Sum256([]byte(cred.Token))
	a.shared.mu.Lock()
	issued := issuedCredential{job: job, overlay: a.shared.tiers.overlayOf(job), stored: cred.stored}
	if issued.overlay != nil {
		cred.Overlay = issued.overlay.String()
		if a.shared.overlayPublicKey != "" {
			cred.PublicKeys = append(cred.PublicKeys, a.shared.overlayPublicKey)
		}
	}
	a.shared.jobTokens[digest] = issued
	a.shared.mu.Unlock()
	a.recordJob(job, func(_ storage.Store, idx *index.Index) error { return idx.StartJob(job, keepRuns, time.Now()) })
	var once sync.Once
	return cred, func(succeeded bool) {
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
