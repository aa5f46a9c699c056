package caddynix

import (
	"fmt"
	"path"
	"strings"

	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

// tierRule decides, for every upload credential, where its pushes go:
// into the cache proper (the trusted tier), or into the overlay of the
// credential's repository and ref (the ref tier), which only that ref's
// credentials read. The default branch of each repository and the refs
// named in trusted_refs are trusted; every other job, pull requests
// included, is not.
type tierRule struct {
	// trustedRefs are full-ref patterns, as path.Match takes them.
	trustedRefs []string
}

// newTierRule checks and completes the trusted_refs patterns: a pattern
// that does not start with refs/ names branches.
func newTierRule(patterns []string) (tierRule, error) {
	var rule tierRule
	for _, p := range patterns {
		full := p
		if !strings.HasPrefix(p, "refs/") {
			full = "refs/heads/" + p
		}
		if _, err := path.Match(full, ""); err != nil || p == "" || strings.HasSuffix(p, "/") {
			return tierRule{}, fmt.Errorf("trusted_refs: %q is not a ref pattern (a branch such as main or release/*, or a full ref such as refs/tags/v*)", p)
		}
		rule.trustedRefs = append(rule.trustedRefs, full)
	}
	return rule, nil
}

// overlayOf returns the overlay job's pushes go to, or nil for a job of
// the trusted tier.
func (r tierRule) overlayOf(job *index.Job) *overlay.Key {
	if job == nil {
		// A credential issued without saying for what is trusted with
		// nothing of the cache proper.
		return &overlay.Key{Ref: "unnamed job"}
	}
	if !job.PullRequest && (job.DefaultBranch || r.trusts(job.Ref)) {
		return nil
	}
	ref := job.Ref
	if ref == "" {
		ref = "no ref"
	}
	return &overlay.Key{Repository: job.Repository, Ref: ref}
}

// trusts reports whether ref matches a trusted_refs pattern.
func (r tierRule) trusts(ref string) bool {
	for _, p := range r.trustedRefs {
		if ok, _ := path.Match(p, ref); ok {
			return true
		}
	}
	return false
}
