package harness

import (
	"fmt"
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

// UploadCacheCaddyfile is a Caddyfile that serves the cache in root, signed
// with secretFile, on the test's HTTP port and accepts uploads with token;
// uploadExtra goes into the upload block.
func UploadCacheCaddyfile(root, secretFile, token, uploadExtra string) string {
	return fmt.Sprintf(`{
	admin {$CADDY_ADMIN}
}

http://:{$CADDY_HTTP_PORT} {
	bind 127.0.0.1
	nix_cache {
		root %s
		secret_key_file %s
		upload {
			token %s
			%s
		}
	}
}
`, root, secretFile, token, uploadExtra)
}

// RunnerCacheCaddyfile is the one-Caddyfile deployment in small: a
// gitea_runner registered with instance by token, running jobs for label
// (`name:docker://image`) in containers on network (host, to reach the
// cache on loopback, or none) and handing them the nix_cache called main,
// which serves root, signed with secretFile, on the test's HTTP port and
// takes their uploads. The admin endpoint is {$CADDY_ADMIN}, a unix socket.
// runnerExtra goes into the gitea_runner block.
func RunnerCacheCaddyfile(instance, token, label, network, root, secretFile, runnerExtra string) string {
	return fmt.Sprintf(`{
	admin {$CADDY_ADMIN}
	gitea_runner {
		instance %s
		registration_token %s
		labels %s
		%s
		container {
			network %s
		}
		nix_cache main
	}
}

http://:{$CADDY_HTTP_PORT} {
	bind 127.0.0.1
	nix_cache {
		name main
		url http://127.0.0.1:{$CADDY_HTTP_PORT}
		root %s
		secret_key_file %s
		upload
	}
}
`, instance, token, label, runnerExtra, network, root, secretFile)
}
