// Package runner bundles the cargoxx runner Caddy modules. Importing it, as
// `xcaddy build --with github.com/cargoxx-pkgs/runner` does, registers the
// nix_cache HTTP handler, the gitea_runner app and the host_status page with
// Caddy.
package runner

import (
	_ "github.com/cargoxx-pkgs/runner/caddynix"
	_ "github.com/cargoxx-pkgs/runner/caddyrunner"
	_ "github.com/cargoxx-pkgs/runner/caddystatus"
)
