package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Keygen makes a binary cache signing key pair called name with
// `caddy nix-cache keygen`, writing the secret key to secretFile and the
// public key to publicFile, and returns the public key. It fails the test
// unless what keygen prints is what it wrote.
func Keygen(t testing.TB, name, secretFile, publicFile string) string {
	t.Helper()
	out := MustRun(t, nil, "", CaddyBinary(t, "caddy"), "nix-cache", "keygen",
		"--name", name, "--secret-key", secretFile, "--public-key", publicFile)
	data, err := os.ReadFile(publicFile)
	if err != nil {
		t.Fatal(err)
	}
	public := strings.TrimSpace(string(data))
	if strings.TrimSpace(out) != public {
		t.Fatalf("keygen printed %q but wrote %q", out, public)
	}
	return public
}

// TempKeygen is Keygen into a new temporary directory; it returns the secret
// key file and the public key.
func TempKeygen(t testing.TB, name string) (secretFile, publicKey string) {
	t.Helper()
	dir := t.TempDir()
	secretFile = filepath.Join(dir, name+".sec")
	return secretFile, Keygen(t, name, secretFile, filepath.Join(dir, name+".pub"))
}

// NetrcNix is the host's nix configured with a netrc file that presents
// token to 127.0.0.1, as a CI job uploading to a cache would be.
func NetrcNix(t testing.TB, token string) *Nix {
	t.Helper()
	return Nix28.Netrc(t, token)
}

// UploadCache serves the cache in root, signed with secretFile, on the
// test's HTTP port, and takes uploads with token; uploadOptions go into the
// upload block.
func UploadCache(root, secretFile, token string, uploadOptions ...string) Caddyfile {
	return Caddyfile{Cache: &CacheSite{
		Options: CacheOptions(root, secretFile),
		Upload:  append([]string{"token " + token}, uploadOptions...),
	}}
}

// RunnerCache is the one-Caddyfile deployment in small: a gitea_runner
// registered with instance by token, running jobs for label
// (`name:docker://image`) in containers on network (host, to reach the
// cache on loopback, or none) and handing them the nix_cache called main,
// which serves root, signed with secretFile, on the test's HTTP port and
// takes their uploads. runnerOptions go into the gitea_runner block.
func RunnerCache(instance, token, label, network, root, secretFile string, runnerOptions ...string) Caddyfile {
	return Caddyfile{
		Runner: &RunnerBlock{
			Instance: instance, RegistrationToken: token, Labels: label, Options: runnerOptions,
			Container: []string{"network " + network}, NixCache: "main",
		},
		Cache: &CacheSite{
			Options: append([]string{"name main", "url http://127.0.0.1:{$CADDY_HTTP_PORT}"}, CacheOptions(root, secretFile)...),
			Upload:  []string{},
		},
	}
}
