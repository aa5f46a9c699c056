package overlay

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// keyInfo tells the overlay key's derivation from every other use of the
// cache's key.
const keyInfo = "cargoxx-runner nix_cache overlay signing key v1"

// SigningKey is the key that signs what overlays serve, derived from the
// cache's own key so that every node of a cache signs alike with nothing
// more to configure. Its name is the cache key's with "-overlay" added.
// Only jobs are told to trust it: a consumer that trusts the cache's key
// never accepts what a ref pushed, wherever it gets it from.
func SigningKey(cacheKey signature.SecretKey) (signature.SecretKey, error) {
	name, encoded, ok := strings.Cut(cacheKey.String(), ":")
	if !ok {
		return signature.SecretKey{}, fmt.Errorf("the cache's secret key is not name:key")
	}
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil || len(raw) != ed25519.PrivateKeySize {
		return signature.SecretKey{}, fmt.Errorf("the cache's secret key %s is not an Ed25519 key", name)
	}
	seed, err := hkdf.Key(sha256.New, raw[:ed25519.SeedSize], nil, keyInfo, ed25519.SeedSize)
	if err != nil {
		return signature.SecretKey{}, err
	}
	derived := ed25519.NewKeyFromSeed(seed)
	return signature.LoadSecretKey(name + "-overlay:" + base64.StdEncoding.EncodeToString(derived))
}
