package nixfmt

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// LoadSecretKey reads a secret key in Nix's `name:base64` format, as written
// by `nix-store --generate-binary-cache-key` or `caddy nix-cache keygen`. A
// key file that the group or others may read is refused: the key is what
// makes clients trust the cache.
func LoadSecretKey(path string) (signature.SecretKey, error) {
	data, err := ReadPrivateFile(path, "secret key")
	if err != nil {
		return signature.SecretKey{}, err
	}
	key, err := signature.LoadSecretKey(data)
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key %s is not in Nix's name:base64 format: %w", path, err)
	}
	if strings.TrimSpace(key.ToPublicKey().Name) == "" {
		return signature.SecretKey{}, fmt.Errorf("secret key %s has no name before the colon", path)
	}
	return key, nil
}

// ReadPrivateFile reads a file holding a secret (what names it in errors),
// refusing one that the group or others may read. Surrounding white space,
// such as the usual final newline, is trimmed.
func ReadPrivateFile(path, what string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("%s %s is not a regular file", what, path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%s %s is readable by group or others (mode %04o): restrict it with `chmod 600 %s`", what, path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", what, err)
	}
	return strings.TrimSpace(string(data)), nil
}

// GenerateKeyPair writes a new key pair in Nix's format: the secret key with
// mode 0600, the public key with mode 0644. Existing files are never
// overwritten.
func GenerateKeyPair(name, secretPath, publicPath string) (signature.PublicKey, error) {
	if name == "" || strings.ContainsAny(name, ": \t\n") {
		return signature.PublicKey{}, fmt.Errorf("key name %q must be non-empty and contain no colon or white space, e.g. cache.example.org-1", name)
	}
	secret, public, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		return signature.PublicKey{}, fmt.Errorf("generating a key pair: %w", err)
	}
	if err := writeNewFile(secretPath, secret.String()+"\n", 0o600); err != nil {
		return signature.PublicKey{}, err
	}
	if err := writeNewFile(publicPath, public.String()+"\n", 0o644); err != nil {
		return signature.PublicKey{}, errors.Join(err, os.Remove(secretPath))
	}
	return public, nil
}

// writeNewFile creates path with the given content and mode, failing if it
// already exists.
func writeNewFile(path, content string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if _, err := f.WriteString(content); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
