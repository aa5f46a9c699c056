package caddynix

import (
	"github.com/caddyserver/caddy/v2"
)

// LiveStoreConfig serves the valid paths of a local Nix store, such as
// the machine's own /nix/store, as they are: narinfo from the store's
// database, NARs and listings made from the files when they are asked
// for. Nothing has to be copied or pushed; the store and its database are
// only ever read. Paths the cache itself holds are answered first.
type LiveStoreConfig struct {
	// Dir is the directory the store's paths are read from. Default: the
	// cache's store_dir. Set it for a store kept under another root, e.g.
	// /srv/builder/nix/store for `--store /srv/builder`, whose paths are
	// still named /nix/store/…. Caddyfile: `store <dir>`.
	Dir string `json:"dir,omitempty"`

	// Database is the store's Nix database, opened read-only. Default:
	// var/nix/db/db.sqlite beside the store directory, e.g.
	// /nix/var/nix/db/db.sqlite for /nix/store. Caddyfile: `database`.
	Database string `json:"database,omitempty"`

	// LogDir holds the build logs Nix keeps, served as log/<drv>.
	// Default: var/log/nix/drvs beside the store directory. Caddyfile:
	// `log_dir`.
	LogDir string `json:"log_dir,omitempty"`

	// Compression is how NARs are announced and sent: "none" sends them
	// as they are made, with their size, so downloads can resume with a
	// Range; "zstd" compresses them while they are sent, which is worth
	// it only when the network, not the CPU, is what is slow. Default:
	// none. Caddyfile: `compression`.
	Compression string `json:"compression,omitempty"`
}

// UpstreamConfig is another binary cache, such as https://cache.nixos.org,
// that answers what the cache and the live store do not hold. Its
// narinfo is served only with a valid signature by one of its trusted
// keys, and keeps that signature; its NARs are passed through, checked
// against their narinfo on the way.
type UpstreamConfig struct {
	// URL is the upstream cache's address, http or https. Caddyfile:
	// `upstream <url>`.
	URL string `json:"url"`

	// TrustedPublicKeys are the keys the upstream's narinfo must be
	// signed by, at least one, in Nix's `name:base64` format. Required.
	// Caddyfile: `trusted_public_key` (repeatable).
	TrustedPublicKeys []string `json:"trusted_public_keys"`

	// Keep stores what is fetched in the cache (pull-through), once its
	// NAR has been received whole and checked against the narinfo in
	// full, as an upload is. A path is kept only when its references
	// are, so a client substituting a whole closure keeps all of it; kept
	// paths are then served, and collected by retention, like uploaded
	// ones. Default: false. Caddyfile: `keep`.
	Keep bool `json:"keep,omitempty"`

	// Sign adds the cache's own signatures to the upstream's narinfo, so
	// that clients trusting only the cache's key accept it: the cache
	// vouches for what the upstream signed. Default: false, and clients
	// need the upstream's key. Caddyfile: `sign`.
	Sign bool `json:"sign,omitempty"`

	// Timeout bounds each narinfo lookup, and the wait for a NAR's
	// response header: an upstream that is down or slow costs a request
	// no more, and is then a miss. Default: 5s. Caddyfile: `timeout`.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}
