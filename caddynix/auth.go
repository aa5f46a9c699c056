package caddynix

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
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
}

// loadCredentials expands and reads the configured tokens.
func loadCredentials(cfg *UploadConfig, repl *caddy.Replacer) (*credentials, error) {
	creds := new(credentials)
	for i, raw := range cfg.Tokens {
		token := strings.TrimSpace(repl.ReplaceAll(raw, ""))
		if token == "" {
			return nil, fmt.Errorf("upload token %d is empty after placeholders are expanded (is its environment variable set?)", i+1)
		}
		if err := creds.add(token, fmt.Sprintf("token %d", i+1)); err != nil {
			return nil, fmt.Errorf("upload token %d: %w", i+1, err)
		}
	}
	for _, file := range cfg.TokenFiles {
		path := repl.ReplaceAll(file, "")
		token, err := nixfmt.ReadPrivateFile(path, "upload token file")
		if err != nil {
			return nil, err
		}
		if err := creds.add(token, "token_file "+path); err != nil {
			return nil, fmt.Errorf("upload token file %s: %w", path, err)
		}
	}
	return creds, nil
}

func (c *credentials) add(token, name string) error {
	if len(token) < minTokenLength {
		return fmt.Errorf("token is shorter than %d characters: generate one with `openssl rand -hex 32`", minTokenLength)
	}
	c.digests = append(c.digests, sha256.Sum256([]byte(token)))
	c.names = append(c.names, name)
	return nil
}

// allows reports whether token is one of the credentials, and its name.
func (c *credentials) allows(token string) (string, bool) {
	digest := sha256.Sum256([]byte(token))
	match := -1
	for i, d := range c.digests {
		if subtle.ConstantTimeCompare(d[:], digest[:]) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", false
	}
	return c.names[match], true
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
