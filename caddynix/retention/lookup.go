package retention

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ErrUnknownPath is wrapped by the errors of a store path the cache does
// not hold.
var ErrUnknownPath = errors.New("the cache does not hold this store path")

// hashLen is the length of a store path's hash part.
const hashLen = 32

// hashOfStorePath reads a store path given as /nix/store/<hash>-<name>,
// <hash>-<name> or <hash>, and returns its hash part.
func hashOfStorePath(storeDir, arg string) (string, error) {
	base := strings.TrimPrefix(arg, storeDir+"/")
	if strings.Contains(base, "/") {
		return "", fmt.Errorf("%q is not a store path of %s", arg, storeDir)
	}
	hash, _, _ := strings.Cut(base, "-")
	if len(hash) != hashLen {
		return "", fmt.Errorf("%q is not a store path: its hash part must be %d characters", arg, hashLen)
	}
	if _, err := nixbase32.DecodeString(hash); err != nil {
		return "", fmt.Errorf("%q is not a store path: its hash part is not nix32", arg)
	}
	return hash, nil
}

// lookup returns the index record of a store path the cache holds.
func (c *Collector) lookup(arg string) (index.Path, error) {
	hash, err := hashOfStorePath(c.storeDir, arg)
	if err != nil {
		return index.Path{}, err
	}
	p, ok, err := c.idx.Get(hash)
	if err != nil {
		return index.Path{}, err
	}
	if !ok {
		// The files are the truth: it may have come since the last look.
		if _, err := c.idx.Reconcile(context.Background(), c.store, c.storeDir, false); err != nil {
			return index.Path{}, err
		}
		if p, ok, err = c.idx.Get(hash); err != nil {
			return index.Path{}, err
		}
	}
	if !ok {
		return index.Path{}, fmt.Errorf("%s: %w", arg, ErrUnknownPath)
	}
	return p, nil
}
