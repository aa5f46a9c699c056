package caddyutil

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
)

func TestAdminOf(t *testing.T) {
	tests := []struct {
		name         string
		admin        *caddy.AdminConfig
		want         string
		socket       string
		reachable    bool
		loopbackOnly bool
	}{
		{name: "default", admin: nil, want: caddy.DefaultAdminListen, reachable: true, loopbackOnly: true},
		{name: "empty listen", admin: &caddy.AdminConfig{}, want: caddy.DefaultAdminListen, reachable: true, loopbackOnly: true},
		{name: "off", admin: &caddy.AdminConfig{Disabled: true}, want: "off", loopbackOnly: true},
		{name: "loopback", admin: &caddy.AdminConfig{Listen: "127.0.0.1:2999"}, want: "127.0.0.1:2999", reachable: true, loopbackOnly: true},
		{name: "ipv6 loopback", admin: &caddy.AdminConfig{Listen: "[::1]:2999"}, want: "[::1]:2999", reachable: true, loopbackOnly: true},
		{name: "all interfaces", admin: &caddy.AdminConfig{Listen: ":2019"}, want: ":2019", reachable: true},
		{name: "unix socket", admin: &caddy.AdminConfig{Listen: "unix//run/caddy/admin.sock"}, want: "unix//run/caddy/admin.sock",
			socket: "/run/caddy/admin.sock", loopbackOnly: true},
		{name: "unix socket with mode", admin: &caddy.AdminConfig{Listen: "unix//run/caddy/admin.sock|0200"}, want: "unix//run/caddy/admin.sock|0200",
			socket: "/run/caddy/admin.sock", loopbackOnly: true},
		{name: "abstract socket", admin: &caddy.AdminConfig{Listen: "unix/@caddy-admin"}, want: "unix/@caddy-admin", reachable: true, loopbackOnly: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, err := caddy.ProvisionContext(&caddy.Config{Admin: tt.admin})
			if err != nil {
				t.Fatal(err)
			}
			got, err := AdminOf(ctx)
			if err != nil {
				t.Fatalf("AdminOf: %v", err)
			}
			if got.String() != tt.want {
				t.Errorf("endpoint %q, want %q", got, tt.want)
			}
			if got.SocketPath() != tt.socket {
				t.Errorf("socket path %q, want %q", got.SocketPath(), tt.socket)
			}
			if got.NetworkReachable() != tt.reachable {
				t.Errorf("NetworkReachable %v, want %v", got.NetworkReachable(), tt.reachable)
			}
			if got.LoopbackOnly() != tt.loopbackOnly {
				t.Errorf("LoopbackOnly %v, want %v", got.LoopbackOnly(), tt.loopbackOnly)
			}
		})
	}
}
