// Package overlay keeps what the jobs of one repository's ref push apart
// from the cache proper: each ref has an overlay, a binary cache of its
// own under overlays/<id>/ in the cache's storage, which only that ref's
// credentials read, signed with a key derived from the cache's own that
// only jobs trust. The cache proper, and so everything a consumer or the
// default branch substitutes, never holds what a ref pushed.
//
// It knows storage and narinfo keys, and nothing of HTTP or Caddy, or of
// who is given which overlay: the handler decides that.
package overlay

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Dir is the directory of the storage that holds the overlays: a
// directory per overlay, and its record beside it.
const Dir = "overlays"

// Key names an overlay: the repository and the ref whose pushes it holds.
// A static upload token in the ref tier has an overlay of its own, with no
// repository and the token's name as ref.
type Key struct {
	Repository string `json:"repository,omitempty"`
	Ref        string `json:"ref"`
}

// ErrBadKey is a key that names no overlay.
var ErrBadKey = errors.New("an overlay needs a ref")

// ID is the overlay's directory name: 32 nix32 characters of the SHA-256
// of its key, so that no repository or ref name reaches a path.
func (k Key) ID() string {
	sum := sha256.Sum256([]byte(k.Repository + "\x00" + k.Ref))
	return nixbase32.EncodeToString(sum[:])[:32]
}

// String names the overlay for people: repository@ref.
func (k Key) String() string {
	if k.Repository == "" {
		return k.Ref
	}
	return k.Repository + "@" + k.Ref
}

// Prefix is the directory below the storage's root that holds the overlay
// id's binary cache.
func Prefix(id string) string { return Dir + "/" + id }

// recordName is the object that describes the overlay id.
func recordName(id string) string { return Dir + "/" + id + ".json" }

// IsID reports whether s can be an overlay's id.
func IsID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune(nixbase32.Alphabet, c) {
			return false
		}
	}
	return true
}

func (k Key) check() error {
	if k.Ref == "" {
		return fmt.Errorf("%w (repository %q)", ErrBadKey, k.Repository)
	}
	return nil
}
