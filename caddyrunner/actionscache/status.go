package actionscache

import (
	"cmp"
	"slices"
	"sync/atomic"
)

// Status is what the status page shows of one actions cache: how much
// each repository keeps against the limit, and how often lookups hit.
type Status struct {
	Name string `json:"name"`
	// MaxSize is how many bytes of entries each repository keeps.
	MaxSize      int64             `json:"max_size"`
	Repositories []RepositoryUsage `json:"repositories"`
	Hits         int64             `json:"hits"`
	Misses       int64             `json:"misses"`
}

// RepositoryUsage is one repository's share of an actions cache.
type RepositoryUsage struct {
	Repository string `json:"repository"`
	Entries    int    `json:"entries"`
	Bytes      int64  `json:"bytes"`
}

// lookupCounts are an entry store's lookups since the process started.
type lookupCounts struct {
	hits, misses atomic.Int64
}

// Caches returns the status of every actions cache this process serves,
// by name.
func Caches() []Status {
	var statuses []Status
	stores.Range(func(_, value any) bool {
		statuses = append(statuses, value.(*entryStore).status())
		return true
	})
	slices.SortFunc(statuses, func(a, b Status) int { return cmp.Compare(a.Name, b.Name) })
	return statuses
}

func (s *entryStore) status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	usage := map[string]*RepositoryUsage{}
	for _, e := range s.entries {
		u := usage[e.Repository]
		if u == nil {
			u = &RepositoryUsage{Repository: e.Repository}
			usage[e.Repository] = u
		}
		u.Entries++
		u.Bytes += e.Size
	}
	st := Status{Name: s.label, MaxSize: s.maxSize.Load(), Repositories: []RepositoryUsage{},
		Hits: s.lookups.hits.Load(), Misses: s.lookups.misses.Load()}
	for _, u := range usage {
		st.Repositories = append(st.Repositories, *u)
	}
	slices.SortFunc(st.Repositories, func(a, b RepositoryUsage) int { return cmp.Compare(a.Repository, b.Repository) })
	return st
}
