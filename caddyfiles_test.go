package runner

import (
	"os"
	"path/filepath"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/cargoxx-pkgs/runner/internal/adapttest"
)

// TestShippedCaddyfilesAdapt checks what the Caddyfiles in caddyfiles/
// adapt to, whole: local.Caddyfile with its defaults, production.Caddyfile
// with the variables of the seed's .env.
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
}
