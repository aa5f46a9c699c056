// Command caddy is Caddy with its standard modules plus the cargoxx runner
// bundle: the nix_cache HTTP handler and the gitea_runner app.
//
// It is the reproducible alternative to xcaddy: versions come from this
// repository's go.mod and go.sum, so a plain `go build ./cmd/caddy` gives the
// same binary everywhere.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/cargoxx-pkgs/runner"
)

func main() {
	caddycmd.Main()
}
