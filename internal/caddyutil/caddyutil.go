// Package caddyutil holds the small pieces of Caddy glue that the bundle's
// modules share.
package caddyutil

import (
	"errors"
	"math"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
)

// RegisterCollectors adds process-wide collectors to a config's metrics
// registry. Each config has a registry of its own, so the collectors are
// registered again on every reload; their counts carry over.
func RegisterCollectors(registry prometheus.Registerer, collectors ...prometheus.Collector) error {
	if registry == nil {
		return nil
	}
	for _, c := range collectors {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// SingleArg returns the one argument of the current Caddyfile option, or an
// argument error naming its place.
func SingleArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	value := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return value, nil
}

// ByteSize reads a size in bytes, or with a unit such as 8GiB, that fits
// an int64.
func ByteSize(value string) (int64, bool) {
	size, err := humanize.ParseBytes(value)
	if err != nil || size > math.MaxInt64 {
		return 0, false
	}
	return int64(size), true
}

// PoolValue returns the value held under key in pool, if any, without
// adding a reference: caddy.UsagePool can only load by creating.
func PoolValue[T any](pool *caddy.UsagePool, key string) (T, bool) {
	var found T
	ok := false
	pool.Range(func(k, value any) bool {
		if k == key {
			found, ok = value.(T)
			return false
		}
		return true
	})
	return found, ok
}
