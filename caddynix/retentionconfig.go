package caddynix

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
)

// RetentionConfig makes the cache delete what it no longer needs, a whole
// closure at a time: a path goes only when no kept path references it, so
// every kept path can still be substituted with all it needs.
type RetentionConfig struct {
	// MaxSize is what the cache may hold, in bytes of NAR files and
	// narinfos: above it, the least recently served (or pushed) paths are
	// deleted until it is under it, those pushed only by pull-request jobs
	// first. Pinned closures, closures kept for CI runs and paths younger
	// than min_age stay even when they alone exceed it; the log says so.
	// Default: no limit. Caddyfile: `max_size 50GiB`.
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxAge deletes paths not served or pushed for this long (and not
	// needed by a kept path). Default: no limit. Caddyfile: `max_age 90d`.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// MinAge is how long after its last push a path is never deleted,
	// whatever its size or age, so uploads in flight are safe; a NAR whose
	// narinfo has not come is kept as long. 0 protects nothing by age, for
	// tests that collect at once. Default (when unset): 1h. Caddyfile:
	// `min_age 1h`.
	MinAge *caddy.Duration `json:"min_age,omitempty"`

	// Interval is how often the cache is collected. Default: 1h.
	// Caddyfile: `interval 1h`.
	Interval caddy.Duration `json:"interval,omitempty"`

	// OverlayMaxAge drops, whole, the overlay of a ref whose jobs pushed
	// nothing for this long (see upload's trusted_refs). Overlays also go
	// first when the cache is over max_size, the least recently pushed
	// first, before any path of the cache proper; paths of the cache
	// proper that a kept overlay's paths reference are kept with it.
	// Default: 7d. Caddyfile: `overlay_max_age 7d`.
	OverlayMaxAge caddy.Duration `json:"overlay_max_age,omitempty"`
}

const defaultRetentionInterval = caddy.Duration(time.Hour)

// policy is what the retention block asks of a collection.
func (r *RetentionConfig) policy() retention.Policy {
	minAge := retention.DefaultMinAge
	if r.MinAge != nil {
		minAge = time.Duration(*r.MinAge)
	}
	overlayMaxAge := retention.DefaultOverlayMaxAge
	if r.OverlayMaxAge > 0 {
		overlayMaxAge = time.Duration(r.OverlayMaxAge)
	}
	return retention.Policy{MaxSize: r.MaxSize, MaxAge: time.Duration(r.MaxAge), MinAge: minAge, OverlayMaxAge: overlayMaxAge}
}

// setDefaults fills in what the retention block leaves out.
func (r *RetentionConfig) setDefaults() {
	if r.MinAge == nil {
		minAge := caddy.Duration(retention.DefaultMinAge)
		r.MinAge = &minAge
	}
	if r.Interval == 0 {
		r.Interval = defaultRetentionInterval
	}
	if r.OverlayMaxAge == 0 {
		r.OverlayMaxAge = caddy.Duration(retention.DefaultOverlayMaxAge)
	}
}

// validate checks a retention block.
func (r *RetentionConfig) validate() error {
	switch {
	case r.MaxSize < 0:
		return fmt.Errorf("retention: max_size %d must be positive", r.MaxSize)
	case r.MaxAge < 0 || r.OverlayMaxAge < 0 || (r.MinAge != nil && *r.MinAge < 0):
		return fmt.Errorf("retention: max_age and overlay_max_age must be positive durations, min_age a positive duration or 0")
	case r.Interval < 0 || (r.Interval > 0 && time.Duration(r.Interval) < time.Second):
		return fmt.Errorf("retention: interval %s is too short: collect at most once a second", time.Duration(r.Interval))
	case r.MaxAge > 0 && r.MinAge != nil && r.MaxAge < *r.MinAge:
		return fmt.Errorf("retention: max_age %s is shorter than min_age %s, so paths would be kept past max_age", time.Duration(r.MaxAge), time.Duration(*r.MinAge))
	}
	return nil
}
