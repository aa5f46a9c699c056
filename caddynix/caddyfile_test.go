package caddynix

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, caddyfile string) (string, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, _, err := adapter.Adapt([]byte(caddyfile), nil)
	return string(out), err
}

func TestCaddyfileErrors(t *testing.T) {
	tests := map[string]string{
		"unknown option":  "nix_cache {\n\tflavour vanilla\n}",
		"duplicate root":  "nix_cache {\n\troot a\n\troot b\n}",
		"missing value":   "nix_cache {\n\troot\n}",
		"two values":      "nix_cache {\n\troot a b\n}",
		"bad priority":    "nix_cache {\n\tpriority high\n}",
		"bad mass query":  "nix_cache {\n\twant_mass_query maybe\n}",
		"inline argument": "nix_cache somewhere",
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			if out, err := adapt(t, ":8080 {\n"+body+"\n}"); err == nil {
				t.Fatalf("adapting %q succeeded: %s", body, out)
			} else if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %q does not say where in the Caddyfile", err)
			}
		})
	}
}
