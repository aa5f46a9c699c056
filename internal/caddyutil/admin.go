package caddyutil

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// AdminEndpoint is where the configuration being provisioned serves
// Caddy's local admin API, which has no authentication: whoever can
// connect to it can load any configuration.
type AdminEndpoint struct {
	// Disabled is true with `admin off`.
	Disabled bool
	// Address is the listener address, e.g. localhost:2019 or
	// unix//run/caddy/admin.sock.
	Address caddy.NetworkAddress
}

// String is the address as written in a Caddyfile, or "off".
func (a AdminEndpoint) String() string {
	if a.Disabled {
		return "off"
	}
	if a.Address.IsUnixNetwork() {
		return a.Address.Network + "/" + a.Address.Host
	}
	return a.Address.String()
}

// SocketPath is the file of a unix socket endpoint, without Caddy's
// `|mode` suffix; "" for any other endpoint and for abstract sockets.
func (a AdminEndpoint) SocketPath() string {
	if a.Disabled || !a.Address.IsUnixNetwork() || strings.HasPrefix(a.Address.Host, "@") {
		return ""
	}
	path, _, _ := strings.Cut(a.Address.Host, "|")
	return path
}

// NetworkReachable reports whether a process that shares the host's
// network namespace can connect to the endpoint without touching the
// filesystem: a TCP port, an abstract unix socket (those live in the
// network namespace), or an inherited file descriptor, which may be
// either.
func (a AdminEndpoint) NetworkReachable() bool {
	return !a.Disabled && a.SocketPath() == ""
}

// LoopbackOnly reports whether a TCP endpoint listens on loopback
// addresses alone, out of reach of containers on their own network.
func (a AdminEndpoint) LoopbackOnly() bool {
	if a.Disabled || a.Address.IsUnixNetwork() || a.Address.IsFdNetwork() {
		return true
	}
	if a.Address.Host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(a.Address.Host)
	return err == nil && ip.IsLoopback()
}

// AdminOf returns the admin endpoint of the configuration that ctx
// provisions. Caddy does not export a module's view of the top-level
// admin settings, so they are read from the context's configuration by
// reflection; should a future Caddy change that shape, this fails rather
// than guess.
func AdminOf(ctx caddy.Context) (AdminEndpoint, error) {
	listen := caddy.DefaultAdminListen
	cfg := reflect.ValueOf(ctx).FieldByName("cfg")
	if !cfg.IsValid() || cfg.Kind() != reflect.Pointer {
		return AdminEndpoint{}, errors.New("this Caddy version does not show modules its admin settings")
	}
	if !cfg.IsNil() {
		admin := cfg.Elem().FieldByName("Admin")
		if !admin.IsValid() || admin.Kind() != reflect.Pointer {
			return AdminEndpoint{}, errors.New("this Caddy version does not show modules its admin settings")
		}
		if !admin.IsNil() {
			disabled := admin.Elem().FieldByName("Disabled")
			configured := admin.Elem().FieldByName("Listen")
			if disabled.Kind() != reflect.Bool || configured.Kind() != reflect.String {
				return AdminEndpoint{}, errors.New("this Caddy version does not show modules its admin settings")
			}
			if disabled.Bool() {
				return AdminEndpoint{Disabled: true}, nil
			}
			if configured.String() != "" {
				listen = configured.String()
			}
		}
	}
	addr, err := caddy.ParseNetworkAddress(listen)
	if err != nil {
		return AdminEndpoint{}, fmt.Errorf("admin endpoint %q: %w", listen, err)
	}
	return AdminEndpoint{Address: addr}, nil
}
