// Package e2e holds the end-to-end tests: they run the caddy binary built
// from this repository against real Nix, a real Gitea and a real Docker
// daemon, started by package harness. Build the binaries first (`make
// build xcaddy`, or simply `make test`).
package e2e
