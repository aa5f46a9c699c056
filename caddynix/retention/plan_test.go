package retention

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

var planNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// graph builds index records: name → references, each with a 100-byte NAR
// of its own, pushed at planNow minus age.
type planPath struct {
	refs        []string
	age         time.Duration
	pullRequest bool
	nar         string
}

func graph(spec map[string]planPath) map[string]*index.Path {
	paths := map[string]*index.Path{}
	for name, s := range spec {
		nar := s.nar
		if nar == "" {
			nar = "nar/" + name + ".nar"
		}
		paths[name] = &index.Path{
			Hash: name, StorePath: "/nix/store/" + name + "-x", NarURL: nar,
			FileSize: 100, References: s.refs,
			LastPushedAt: planNow.Add(-s.age), PushedAt: planNow.Add(-s.age),
			PullRequestOnly: s.pullRequest,
		}
	}
	return paths
}

// planned is a plan in terms of the records it names.
type planned struct {
	Delete                           []*index.Path
	Nars                             []string
	SizeBefore, SizeAfter, Protected int64
}

// catalogOf is the catalog of paths and their served times, as
// loadCatalog reads it from an index that holds them.
func catalogOf(paths map[string]*index.Path, served map[string]time.Time) *catalog {
	hashes := slices.SortedFunc(maps.Keys(paths), func(a, b string) int { return bytes.Compare(index.KeyOf(a), index.KeyOf(b)) })
	b := newCatalogBuilder(len(paths))
	for _, hash := range hashes {
		p := paths[hash]
		var pushed int64
		if !p.LastPushedAt.IsZero() {
			pushed = p.LastPushedAt.UnixNano()
		}
		b.add(&index.Summary{Key: index.KeyOf(hash), NarKey: index.NarKey(p.NarURL), FileSize: p.FileSize,
			NarinfoSize: p.NarinfoSize, LastPushedAt: pushed, PullRequestOnly: p.PullRequestOnly})
	}
	b.indexHashes()
	for hash, at := range served {
		b.served(index.KeyOf(hash), at)
	}
	for _, hash := range hashes {
		b.referencesOf(func(fn func([]byte)) {
			for _, ref := range paths[hash].References {
				fn(index.KeyOf(ref))
			}
		})
	}
	return b.c
}

// planOf plans a collection of paths.
func planOf(paths map[string]*index.Path, served map[string]time.Time, roots []string, pol Policy, now time.Time) planned {
	cat := catalogOf(paths, served)
	p := planCollection(cat, roots, pol, now)
	out := planned{SizeBefore: p.sizeBefore, SizeAfter: p.sizeAfter, Protected: p.protected}
	for _, id := range p.delete {
		out.Delete = append(out.Delete, paths[cat.hash(id)])
	}
	for _, id := range p.nars {
		out.Nars = append(out.Nars, paths[cat.hash(id)].NarURL)
	}
	return out
}

func deletedNames(plan planned) []string {
	var names []string
	for _, p := range plan.Delete {
		names = append(names, p.Hash)
	}
	return names
}

func TestRetentionDeletesReferrersFirst(t *testing.T) {
	paths := graph(map[string]planPath{
		"lib": {age: 10 * time.Hour},
		"app": {refs: []string{"lib"}, age: 10 * time.Hour},
		"top": {refs: []string{"app"}, age: 10 * time.Hour},
	})
	plan := planOf(paths, nil, nil, Policy{MaxSize: 150}, planNow)
	if got := deletedNames(plan); !slices.Equal(got, []string{"top", "app"}) {
		t.Fatalf("deleted %v, want [top app]: the closure of what is kept must stay whole", got)
	}
	if plan.SizeBefore != 300 || plan.SizeAfter != 100 {
		t.Errorf("size %d → %d, want 300 → 100", plan.SizeBefore, plan.SizeAfter)
	}
	if !slices.Equal(plan.Nars, []string{"nar/top.nar", "nar/app.nar"}) {
		t.Errorf("NARs deleted %v", plan.Nars)
	}
}

func TestRetentionKeepsWhatARecentPathNeeds(t *testing.T) {
	paths := graph(map[string]planPath{
		"glibc":  {age: 300 * 24 * time.Hour},
		"oldapp": {refs: []string{"glibc"}, age: 200 * 24 * time.Hour},
		"newapp": {refs: []string{"glibc"}, age: 200 * 24 * time.Hour},
	})
	served := map[string]time.Time{"newapp": planNow.Add(-time.Hour)}
	plan := planOf(paths, served, nil, Policy{MaxAge: 90 * 24 * time.Hour}, planNow)
	if got := deletedNames(plan); !slices.Equal(got, []string{"oldapp"}) {
		t.Fatalf("deleted %v, want [oldapp]: glibc is needed by a path served an hour ago", got)
	}
}

func TestRetentionLeastRecentlyUsedAndPullRequestsFirst(t *testing.T) {
	paths := graph(map[string]planPath{
		"old":     {age: 50 * time.Hour},
		"older":   {age: 60 * time.Hour},
		"pr":      {age: 2 * time.Hour, pullRequest: true},
		"fresh":   {age: 3 * time.Hour},
		"served":  {age: 70 * time.Hour},
		"servedd": {age: 70 * time.Hour},
	})
	served := map[string]time.Time{"served": planNow.Add(-time.Hour)}
	plan := planOf(paths, served, nil, Policy{MaxSize: 250, MinAge: time.Hour}, planNow)
	if got := deletedNames(plan); !slices.Equal(got, []string{"pr", "servedd", "older", "old"}) {
		t.Fatalf("deleted %v, want the pull-request push, then least recently used first", got)
	}
}

func TestRetentionKeepsPinsAndYoungPathsOverMaxSize(t *testing.T) {
	paths := graph(map[string]planPath{
		"dep":    {age: 100 * time.Hour},
		"pinned": {refs: []string{"dep"}, age: 100 * time.Hour},
		"young":  {age: 10 * time.Minute},
		"other":  {age: 100 * time.Hour},
	})
	plan := planOf(paths, nil, []string{"pinned"}, Policy{MaxSize: 100, MinAge: time.Hour}, planNow)
	if got := deletedNames(plan); !slices.Equal(got, []string{"other"}) {
		t.Fatalf("deleted %v, want only [other]", got)
	}
	if plan.Protected != 300 || plan.SizeAfter != 300 {
		t.Errorf("protected %d, after %d; want 300 and 300 (over max_size because of the pin)", plan.Protected, plan.SizeAfter)
	}
}

func TestRetentionSharedNarGoesWithItsLastUser(t *testing.T) {
	paths := graph(map[string]planPath{
		"a": {age: 100 * time.Hour, nar: "nar/same.nar"},
		"b": {age: 50 * time.Hour, nar: "nar/same.nar"},
	})
	plan := planOf(paths, nil, nil, Policy{MaxAge: 70 * time.Hour}, planNow)
	if len(plan.Delete) != 1 || len(plan.Nars) != 0 {
		t.Fatalf("deleted %v and NARs %v; the NAR b still names must stay", deletedNames(plan), plan.Nars)
	}
	if plan.SizeBefore != 100 {
		t.Errorf("a NAR two paths share counts once: size %d", plan.SizeBefore)
	}
}

// TestRetentionNeverBreaksAClosure runs random caches through random
// policies: whatever is kept has every reference kept, and a NAR goes only
// with every path naming it.
func TestRetentionNeverBreaksAClosure(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		spec := map[string]planPath{}
		n := 5 + rng.IntN(60)
		for i := range n {
			s := planPath{age: time.Duration(rng.IntN(200)) * time.Hour, pullRequest: rng.IntN(4) == 0}
			for range rng.IntN(4) {
				if i > 0 {
					s.refs = append(s.refs, fmt.Sprint("p", rng.IntN(i)))
				}
			}
			if rng.IntN(5) == 0 {
				s.nar = fmt.Sprint("nar/shared", rng.IntN(3), ".nar")
			}
			spec[fmt.Sprint("p", i)] = s
		}
		paths := graph(spec)
		served := map[string]time.Time{}
		for hash := range paths {
			if rng.IntN(3) == 0 {
				served[hash] = planNow.Add(-time.Duration(rng.IntN(100)) * time.Hour)
			}
		}
		var roots []string
		if rng.IntN(2) == 0 {
			roots = append(roots, fmt.Sprint("p", rng.IntN(n)))
		}
		pol := Policy{MaxSize: int64(rng.IntN(n * 100)), MaxAge: time.Duration(rng.IntN(150)) * time.Hour, MinAge: time.Duration(rng.IntN(20)) * time.Hour}
		plan := planOf(paths, served, roots, pol, planNow)

		deleted := map[string]bool{}
		for i, p := range plan.Delete {
			deleted[p.Hash] = true
			if planNow.Sub(p.LastPushedAt) < pol.MinAge {
				t.Fatalf("seed %d: %s is younger than min_age and was deleted", seed, p.Hash)
			}
			// Stopping after any deletion leaves every kept path whole.
			for hash, kept := range paths {
				if deleted[hash] {
					continue
				}
				for _, ref := range kept.References {
					if deleted[ref] {
						t.Fatalf("seed %d: after deleting %d paths, kept %s references deleted %s", seed, i+1, hash, ref)
					}
				}
			}
		}
		for _, root := range roots {
			if deleted[root] {
				t.Fatalf("seed %d: pinned %s deleted", seed, root)
			}
		}
		gone := map[string]bool{}
		for _, nar := range plan.Nars {
			gone[nar] = true
		}
		var size int64
		counted := map[string]bool{}
		for hash, p := range paths {
			if deleted[hash] {
				continue
			}
			if gone[p.NarURL] {
				t.Fatalf("seed %d: NAR %s deleted while kept %s names it", seed, p.NarURL, hash)
			}
			if !counted[p.NarURL] {
				counted[p.NarURL] = true
				size += p.FileSize
			}
		}
		if size != plan.SizeAfter {
			t.Fatalf("seed %d: size after %d, plan says %d", seed, size, plan.SizeAfter)
		}
	}
}
