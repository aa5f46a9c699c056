package caddyrunner

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

func adminAt(t *testing.T, listen string) caddyutil.AdminEndpoint {
	t.Helper()
	if listen == "off" {
		return caddyutil.AdminEndpoint{Disabled: true}
	}
	addr, err := caddy.ParseNetworkAddress(listen)
	if err != nil {
		t.Fatal(err)
	}
	return caddyutil.AdminEndpoint{Address: addr}
}

func TestAdminExposure(t *testing.T) {
	docker, _ := parseLabels([]string{"e2e:docker://busybox"})
	withHost, _ := parseLabels([]string{"e2e:docker://busybox", "metal:host"})
	hostNet := ContainerConfig{Network: "host", DockerHost: "-"}
	ownNet := ContainerConfig{DockerHost: "-"}
	for name, tc := range map[string]struct {
		admin     string
		labels    labelSet
		container ContainerConfig
		protected []string
		want      string // a part of the reason; "" for none
	}{
		"tcp admin, host network":              {"localhost:2019", docker, hostNet, nil, "host network reach the admin endpoint localhost:2019"},
		"tcp admin, host label":                {"127.0.0.1:2019", withHost, ownNet, nil, "host label(s) metal reach"},
		"tcp admin, own network":               {"localhost:2019", docker, ownNet, nil, ""},
		"tcp admin on every interface":         {":2019", docker, ownNet, nil, "listens beyond loopback"},
		"abstract socket, host network":        {"unix/@caddy-admin", docker, hostNet, nil, "host network reach"},
		"unix socket, host network":            {"unix//run/caddy/admin.sock", docker, hostNet, nil, ""},
		"unix socket, host label":              {"unix//run/caddy/admin.sock", withHost, hostNet, nil, ""},
		"admin off, host label":                {"off", withHost, hostNet, nil, ""},
		"docker socket":                        {"off", docker, ContainerConfig{DockerHost: "unix:///var/run/docker.sock"}, nil, "Docker socket"},
		"privileged":                           {"off", docker, ContainerConfig{DockerHost: "-", Privileged: true}, nil, "privileged"},
		"volumes reach the socket":             {"unix//run/caddy/admin.sock", docker, ContainerConfig{DockerHost: "-", ValidVolumes: []string{"/run/**"}}, []string{"/run/caddy/admin.sock"}, "valid_volumes /run/** lets a job mount /run/caddy/admin.sock"},
		"volumes reach the socket's directory": {"off", docker, ContainerConfig{DockerHost: "-", ValidVolumes: []string{"/run/caddy"}}, []string{"/run/caddy/admin.sock"}, "lets a job mount"},
		"every volume":                         {"off", docker, ContainerConfig{DockerHost: "-", ValidVolumes: []string{"**"}}, []string{"/var/lib/caddy"}, "valid_volumes **"},
		"other volumes":                        {"off", docker, ContainerConfig{DockerHost: "-", ValidVolumes: []string{"/srv/shared/**", "cache-volume"}}, []string{"/run/caddy/admin.sock", "/var/lib/caddy"}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			got := adminExposure(adminAt(t, tc.admin), tc.labels, tc.container, tc.protected)
			if tc.want == "" && got != "" {
				t.Fatalf("refused (%s), want accepted", got)
			}
			if !strings.Contains(got, tc.want) {
				t.Fatalf("reason %q, want it to contain %q", got, tc.want)
			}
		})
	}
}

// TestProvisionRefusesReachableAdmin provisions the app in a configuration
// whose admin endpoint listens on TCP, as Caddy does when it loads one.
func TestProvisionRefusesReachableAdmin(t *testing.T) {
	provision := func(admin *caddy.AdminConfig, app string) error {
		ctx, err := caddy.ProvisionContext(&caddy.Config{
			Admin:   admin,
			AppsRaw: caddy.ModuleMap{"gitea_runner": json.RawMessage(app)},
		})
		if err == nil {
			_, err = ctx.App("gitea_runner")
		}
		return err
	}
	hostNetwork := `{"instance":"https://git.example.org","labels":["e2e:docker://busybox"],"container":{"network":"host"}%s}`
	err := provision(&caddy.AdminConfig{Listen: "localhost:2019"}, strings.Replace(hostNetwork, "%s", "", 1))
	if err == nil || !strings.Contains(err.Error(), "admin unix//") || !strings.Contains(err.Error(), "trusted_jobs") {
		t.Fatalf("TCP admin with host networking: %v, want a refusal naming the fixes", err)
	}
	if err := provision(nil, strings.Replace(hostNetwork, "%s", "", 1)); err == nil {
		t.Fatal("the default admin endpoint (localhost:2019) with host networking was accepted")
	}
	if err := provision(&caddy.AdminConfig{Listen: "localhost:2019"}, strings.Replace(hostNetwork, "%s", `,"trusted_jobs":true`, 1)); err != nil {
		t.Fatalf("trusted_jobs: %v", err)
	}
	if err := provision(&caddy.AdminConfig{Listen: "unix/" + t.TempDir() + "/admin.sock"}, strings.Replace(hostNetwork, "%s", "", 1)); err != nil {
		t.Fatalf("unix socket admin: %v", err)
	}
}

func TestUntrustedRefusal(t *testing.T) {
	labels, _ := parseLabels([]string{"e2e:docker://busybox", "metal:host"})
	fork := taskWithContext(t, map[string]any{"event_name": "pull_request", "event": pullRequestEvent("someone/pkgs", "owner/pkgs")})
	push := taskWithContext(t, map[string]any{"event_name": "push", "event": map[string]any{}})
	ownNet := &settings{labels: labels, container: ContainerConfig{DockerHost: "-"}}
	hostNet := &settings{labels: labels, container: ContainerConfig{DockerHost: "-", Network: "host"}}
	for name, tc := range map[string]struct {
		task   bool // fork
		s      *settings
		runsOn []string
		want   string
	}{
		"fork on a host label":          {true, ownNet, []string{"metal"}, "picks a host label"},
		"fork on the host network":      {true, hostNet, []string{"e2e"}, "host network"},
		"fork in its own network":       {true, ownNet, []string{"e2e"}, ""},
		"push on a host label":          {false, ownNet, []string{"metal"}, ""},
		"push on the host network":      {false, hostNet, []string{"e2e"}, ""},
		"fork with privileged":          {true, &settings{labels: labels, container: ContainerConfig{DockerHost: "-", Privileged: true}}, []string{"e2e"}, "privileged"},
		"fork with the docker socket":   {true, &settings{labels: labels, container: ContainerConfig{DockerHost: "/var/run/docker.sock"}}, []string{"e2e"}, "Docker socket"},
		"fork naming several labels":    {true, ownNet, []string{"metal", "e2e"}, "host label"},
		"fork naming an unknown label":  {true, ownNet, []string{"nope"}, ""},
		"push in its own network, fork": {true, ownNet, []string{"e2e"}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			task := push
			if tc.task {
				task = fork
			}
			got := untrustedRefusal(task, tc.s, tc.runsOn)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("refusal %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHideCaddyEnv(t *testing.T) {
	t.Setenv("CACHE_UPLOAD_TOKEN", "caddys-own-secret-token")
	t.Setenv("PATH", "/usr/bin:/bin")
	t.Setenv("LC_ALL", "C.UTF-8")
	t.Setenv("CONFIGURED", "from-caddy")
	env := map[string]string{"CONFIGURED": "from-env-option"}
	hideCaddyEnv(env)
	if v, ok := env["CACHE_UPLOAD_TOKEN"]; !ok || v != "" {
		t.Errorf("CACHE_UPLOAD_TOKEN = %q, %v: want it set empty, so the job does not inherit Caddy's", v, ok)
	}
	for name, want := range map[string]string{"CONFIGURED": "from-env-option"} {
		if env[name] != want {
			t.Errorf("%s = %q, want %q", name, env[name], want)
		}
	}
	for _, name := range []string{"PATH", "LC_ALL"} {
		if _, ok := env[name]; ok {
			t.Errorf("%s was overridden; the job should inherit it", name)
		}
	}
}
