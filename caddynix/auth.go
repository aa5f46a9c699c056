package caddynix

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// minTokenLength keeps guessable upload tokens out of the configuration.
const minTokenLength = 16

// credentials are the upload tokens the handler accepts. Only their SHA-256
// digests are kept, and they are compared in constant time.
type credentials struct {
	digests [][sha256.Size]byte
	// names say which configured token each digest is, for provenance:
	// "token 1", or "token_file /run/secrets/upload".
	names []string
	// overlays are where each token's pushes go: nil for the cache proper.
	overlays []*overlay.Key
}

// loadCredentials expands and reads the configured tokens.
func loadCredentials(cfg *UploadConfig, repl *caddy.Replacer) (*credentials, error) {
	creds := new(credentials)
	for _, set := range []struct {
		tokens, files []string
		prefix        string
		ref           bool
	}{{cfg.Tokens, cfg.TokenFiles, "", false}, {cfg.RefTokens, cfg.RefTokenFiles, "ref_", true}} {
		for i, raw := range set.tokens {
			token := strings.TrimSpace(repl.ReplaceAll(raw, ""))
			name := fmt.Sprintf("%stoken %d", set.prefix, i+1)
			if token == "" {
				return nil, fmt.Errorf("upload %s is empty after placeholders are expanded (is its environment variable set?)", name)
			}
			if err := creds.add(token, name, set.ref); err != nil {
				return nil, fmt.Errorf("upload %s: %w", name, err)
			}
		}
		for _, file := range set.files {
			path := repl.ReplaceAll(file, "")
			token, err := nixfmt.ReadPrivateFile(path, "upload token file")
			if err != nil {
				return nil, err
			}
			if err := creds.add(token, set.prefix+"token_file "+path, set.ref); err != nil {
				return nil, fmt.Errorf("upload token file %s: %w", path, err)
			}
		}
	}
	return creds, nil
}

func (c *credentials) add(token, name string, ref bool) error {
	if len(token) < minTokenLength {
		return fmt.Errorf("token is shorter than %d characters: generate one with `openssl rand -hex 32`", minTokenLength)
	}
	digest := sha256.Sum256([]byte(token))
	if slices.Contains(c.digests, digest) {
		return fmt.Errorf("the same token is given twice")
	}
	c.digests = append(c.digests, digest)
	c.names = append(c.names, name)
	var key *overlay.Key
	if ref {
		key = &overlay.Key{Ref: name}
	}
	c.overlays = append(c.overlays, key)
	return nil
}

// allows reports whether token is one of the credentials, with its name
// and the overlay its pushes go to (nil: the cache proper).
func (c *credentials) allows(token string) (string, *overlay.Key, bool) {
	digest := sha256.Sum256([]byte(token))
	match := -1
	for i, d := range c.digests {
		if subtle.ConstantTimeCompare(d[:], digest[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", nil, false
	}
	return c.names[match], c.overlays[match], true
}

// requestToken returns the token a request presents: the password of Basic
// authentication (what nix sends from a netrc file, whatever the user name)
// or a Bearer token.
func requestToken(r *http.Request) (string, bool) {
	if _, password, ok := r.BasicAuth(); ok {
		return password, true
	}
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(token), true
	}
	return "", false
}
