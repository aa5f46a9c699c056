package caddyrunner

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t *testing.T, caddyfile string) (string, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	return string(out), err
}

func TestCaddyfileAdapt(t *testing.T) {
	got, err := adapt(t, `{
	gitea_runner {
		instance https://git.example.org
		registration_token {env.GITEA_RUNNER_REGISTRATION_TOKEN}
		scope repo owner/name
		name cargoxx-pkgs-runner
		labels self-hosted:docker://cargoxx-runner-job:latest other:host
		labels more:host,again:host
		capacity 2
		fetch_interval 2s
		timeout 3h
		shutdown_timeout 10m
		state_file data/.runner
		env KEY value
		container {
			network host
			privileged
			options "--cpus 2"
			valid_volumes /srv/shared/**
			docker_host -
			force_pull
		}
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	want := `"gitea_runner":{"instance":"https://git.example.org","registration_token":"{env.GITEA_RUNNER_REGISTRATION_TOKEN}","scope":"repo owner/name","name":"cargoxx-pkgs-runner","labels":["self-hosted:docker://cargoxx-runner-job:latest","other:host","more:host","again:host"],"capacity":2,"fetch_interval":2000000000,"timeout":10800000000000,"shutdown_timeout":600000000000,"state_file":"data/.runner","env":{"KEY":"value"},"container":{"network":"host","privileged":true,"options":"--cpus 2","valid_volumes":["/srv/shared/**"],"docker_host":"-","force_pull":true}}`
	if !strings.Contains(got, want) {
		t.Fatalf("adapted:\n%s\nwant it to contain:\n%s", got, want)
	}
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
	} {
		t.Run(name, func(t *testing.T) {
			if out, err := adapt(t, "{\n\tgitea_runner {\n\t\t"+body+"\n\t}\n}"); err == nil {
				t.Fatalf("adapting %q succeeded: %s", body, out)
			}
		})
	}
}
