package caddyrunner

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, caddyfile string) (string, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	return string(out), err
}

func TestCaddyfileErrors(t *testing.T) {
	for name, body := range map[string]string{
		"unknown option":      "flavour vanilla",
		"duplicate instance":  "instance a\n\t\tinstance b",
		"bad capacity":        "capacity many",
		"zero capacity":       "capacity 0",
		"bad duration":        "timeout soon",
		"bad scope":           "scope team x",
		"repo scope no slash": "scope repo name",
		"env without value":   "env KEY",
		"unknown container":   "container {\n\t\t\tgpu all\n\t\t}",
		"empty labels":        "labels",
		"webhook unknown":     "webhook {\n\t\t\tsigned yes\n\t\t}",
		"webhook bad poll":    "webhook {\n\t\t\tpoll_interval often\n\t\t}",
		"ephemeral other arg": "ephemeral forever",
	} {
		t.Run(name, func(t *testing.T) {
			if out, err := adapt(t, "{\n\tgitea_runner {\n\t\t"+body+"\n\t}\n}"); err == nil {
				t.Fatalf("adapting %q succeeded: %s", body, out)
			}
		})
	}
}

func TestValidateSettings(t *testing.T) {
	for body, wantErr := range map[string]string{
		"fetch_interval 2s\n\t\tfetch_interval_max 5s":                            "",
		"fetch_interval_max 5s":                                                   "",
		"fetch_interval 2s\n\t\tfetch_interval_max 1s":                            "fetch_interval_max 1s must not be shorter than fetch_interval (2s)",
		"fetch_interval_max 1s":                                                   "fetch_interval_max 1s must not be shorter than fetch_interval (2s)",
		"fetch_interval 50ms":                                                     "fetch_interval 50ms must be at least 100ms",
		"webhook {\n\t\t\tsecret s\n\t\t}":                                        "",
		"webhook {\n\t\t\tpoll_interval 1m\n\t\t}":                                "a secret is required",
		"webhook {\n\t\t\tsecret s\n\t\t\tpoll_interval 10ms\n\t\t}":              "poll_interval 10ms must be at least 1s",
		"webhook {\n\t\t\tsecret s\n\t\t\turl ftp://x\n\t\t}":                     "is not an http(s) URL",
		"webhook {\n\t\t\tsecret s\n\t\t\turl https://ci.example.org/hook\n\t\t}": "which takes an api_token",
		"ephemeral exit_when_done":                                                "",
	} {
		t.Run(body, func(t *testing.T) {
			out, err := adapt(t, "{\n\tgitea_runner {\n\t\tinstance http://127.0.0.1:1\n\t\tregistration_token x\n\t\tlabels a:docker://busybox\n\t\tstate_file "+t.TempDir()+"/.runner\n\t\t"+body+"\n\t}\n}")
			if err != nil {
				t.Fatal(err)
			}
			var cfg caddy.Config
			if err := json.Unmarshal([]byte(out), &cfg); err != nil {
				t.Fatal(err)
			}
			err = caddy.Validate(&cfg)
			switch {
			case wantErr == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
				t.Fatalf("got error %v, want one saying %q", err, wantErr)
			}
		})
	}
}

func TestCaddyfileActionsCache(t *testing.T) {
	out, err := adapt(t, "{\n\tgitea_runner {\n\t\tinstance http://127.0.0.1:1\n\t\tactions_cache main\n\t}\n}")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"actions_cache":"main"`) {
		t.Fatalf("actions_cache did not reach the app: %s", out)
	}
	if _, err := adapt(t, "{\n\tgitea_runner {\n\t\tactions_cache\n\t}\n}"); err == nil {
		t.Fatal("actions_cache without a name was accepted")
	}
}
