package actionscache

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

// Scope is what one job may do with the cache: read the entries of its
// repository written on ReadRefs, in that order, and write entries that
// are stamped with WriteRef.
type Scope struct {
	// Repository is the job's repository, owner/name.
	Repository string
	// WriteRef is the ref the job's entries are stamped with, e.g.
	// refs/heads/main or refs/pull/7/head.
	WriteRef string
	// ReadRefs are the refs whose entries the job restores, first match
	// wins: its own ref, then the repository's default branch.
	ReadRefs []string
}

// registries holds, per cache name, the live job tokens. Old and new
// handler instances share it across a reload, so that a job that started
// before a reload keeps its access after it.
var registries = caddy.NewUsagePool()

// registry is the set of job tokens of one named cache.
type registry struct {
	mu     sync.RWMutex
	url    string
	tokens map[[sha256.Size]byte]*grant
	// signer signs download URLs, with a key that lives as long as the
	// registry.
	signer *signer
	// released is called with a grant whose job ended, so that its
	// unfinished uploads are dropped.
	released func(*grant)
}

// grant is one job's access.
type grant struct {
	scope Scope
}

func (r *registry) Destruct() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.tokens)
	return nil
}

// lookup returns the grant of a token, if it is live.
func (r *registry) lookup(token string) (*grant, bool) {
	if token == "" {
		return nil, false
	}
	digest := sha256.Sum256([]byte(token))
	r.mu.RLock()
	defer r.mu.RUnlock()
	g, ok := r.tokens[digest]
	return g, ok
}

// Access lets a runner in the same Caddy give jobs the cache a named
// actions_cache handler serves.
type Access struct {
	// URL is where jobs reach the cache: ACTIONS_CACHE_URL, ending in /.
	URL      string
	registry *registry
}

// ErrNoSuchCache is returned by Lookup for a name no handler serves.
var ErrNoSuchCache = errors.New("no actions_cache with that name is configured")

// Lookup finds the cache that an actions_cache handler named name serves
// in this process.
func Lookup(name string) (*Access, error) {
	reg, ok := caddyutil.PoolValue[*registry](registries, name)
	if !ok {
		return nil, fmt.Errorf("actions_cache %q: %w (give the handler `name %s`)", name, ErrNoSuchCache, name)
	}
	reg.mu.RLock()
	defer reg.mu.RUnlock()
	return &Access{URL: reg.url, registry: reg}, nil
}

// Admit lets requests that carry token, a job's ACTIONS_RUNTIME_TOKEN, use
// the cache within scope until release is called, when the job ends. An
// empty token admits nothing.
func (a *Access) Admit(token string, scope Scope) (release func()) {
	if token == "" {
		return func() {}
	}
	digest := sha256.Sum256([]byte(token))
	g := &grant{scope: scope}
	a.registry.mu.Lock()
	a.registry.tokens[digest] = g
	a.registry.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			a.registry.mu.Lock()
			if a.registry.tokens[digest] == g {
				delete(a.registry.tokens, digest)
			}
			released := a.registry.released
			a.registry.mu.Unlock()
			if released != nil {
				released(g)
			}
		})
	}
}
