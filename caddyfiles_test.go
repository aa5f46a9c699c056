package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/cargoxx-pkgs/runner/internal/adapttest"
)

// TestShippedCaddyfilesAdapt checks what the Caddyfiles in caddyfiles/
// adapt to, whole: local.Caddyfile with its defaults, production.Caddyfile
// with the variables of the seed's .env, s3-node.Caddyfile with a bucket.
func TestShippedCaddyfilesAdapt(t *testing.T) {
	// Unset, so that the Caddyfiles' defaults apply; t.Setenv restores them.
	for _, name := range []string{"CADDY_ADMIN", "CADDY_HTTP_PORT", "CADDY_HTTPS_PORT", "GITEA_RUNNER_NAME", "GITEA_RUNNER_LABELS"} {
		t.Setenv(name, "")
		if err := os.Unsetenv(name); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("local", func(t *testing.T) {
		adapttest.RunFile(t, filepath.Join("caddyfiles", "local.Caddyfile"), filepath.Join("testdata", "local.json"))
	})
	t.Run("production", func(t *testing.T) {
		t.Setenv("GITEA_INSTANCE_URL", "https://git.example.org")
		t.Setenv("CACHE_DOMAIN", "cache.example.org")
		t.Setenv("ACME_EMAIL", "ops@example.org")
		adapttest.RunFile(t, filepath.Join("caddyfiles", "production.Caddyfile"), filepath.Join("testdata", "production.json"))
	})
	t.Run("s3-node", func(t *testing.T) {
		t.Setenv("CACHE_DOMAIN", "cache.example.org")
		t.Setenv("S3_ENDPOINT", "https://s3.example.org")
		t.Setenv("S3_BUCKET", "nix-cache")
		t.Setenv("S3_ACCESS_KEY_ID", "AKIAEXAMPLE")
		adapttest.RunFile(t, filepath.Join("caddyfiles", "s3-node.Caddyfile"), filepath.Join("testdata", "s3-node.json"))
	})
}

// TestProductionCaddyfileNamesAMissingVariable: started without one of the
// variables it needs, production.Caddyfile says which.
func TestProductionCaddyfileNamesAMissingVariable(t *testing.T) {
	for _, missing := range []string{"GITEA_INSTANCE_URL", "CACHE_DOMAIN", "ACME_EMAIL"} {
		t.Run(missing, func(t *testing.T) {
			for _, name := range []string{"GITEA_INSTANCE_URL", "CACHE_DOMAIN", "ACME_EMAIL"} {
				t.Setenv(name, "set-"+name)
			}
			t.Setenv(missing, "")
			data, err := os.ReadFile(filepath.Join("caddyfiles", "production.Caddyfile"))
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}.Adapt(data, map[string]any{"filename": "production.Caddyfile"})
			if err == nil || !strings.Contains(err.Error(), "environment variable "+missing+", which is not set") {
				t.Fatalf("adapting without %s: %v", missing, err)
			}
		})
	}
}
