package caddynix

// UploadConfig enables uploads with `nix copy --to http(s)://…`. Without it,
// the cache is read-only and PUT answers 405.
type UploadConfig struct {
	// Tokens are accepted as upload credentials: as the password of Basic
	// authentication (what nix sends from a netrc file, with any user name)
	// or as a Bearer token. Placeholders such as {env.CACHE_UPLOAD_TOKEN} are
	// expanded. At least 16 characters. Caddyfile: `token` (repeatable).
	Tokens []string `json:"tokens,omitempty"`

	// TokenFiles are files holding one token each, which must not be
	// readable by group or others. Caddyfile: `token_file` (repeatable).
	//
	// With neither tokens nor token files, only the short-lived credentials
	// that a gitea_runner in the same Caddy gives its jobs are accepted.
	TokenFiles []string `json:"token_files,omitempty"`

	// MaxNarSize bounds a NAR upload, compressed and uncompressed, in
	// bytes. Larger uploads get 413. Default: 8 GiB. Caddyfile:
	// `max_nar_size`, which also takes sizes such as 8GiB.
	MaxNarSize int64 `json:"max_nar_size,omitempty"`

	// MaxLogSize bounds a build log upload once its Content-Encoding is
	// undone, in bytes. Larger uploads get 413. Default: 64 MiB.
	// Caddyfile: `max_log_size`.
	MaxLogSize int64 `json:"max_log_size,omitempty"`
}
