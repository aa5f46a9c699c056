package caddynix

// UploadConfig enables uploads with `nix copy --to http(s)://…`. Without it,
// the cache is read-only and PUT answers 405.
type UploadConfig struct {
	// Tokens are accepted as upload credentials of the trusted tier: what
	// they push goes into the cache proper. They are sent as the password of
	// Basic authentication (what nix sends from a netrc file, with any user
	// name) or as a Bearer token. Placeholders such as
	// {env.CACHE_UPLOAD_TOKEN} are expanded. At least 16 characters.
	// Caddyfile: `token` (repeatable).
	Tokens []string `json:"tokens,omitempty"`

	// TokenFiles are files holding one token each, which must not be
	// readable by group or others. Caddyfile: `token_file` (repeatable).
	//
	// With neither tokens nor token files, only the short-lived credentials
	// that a gitea_runner in the same Caddy gives its jobs are accepted.
	TokenFiles []string `json:"token_files,omitempty"`

	// RefTokens and RefTokenFiles are tokens as Tokens and TokenFiles are,
	// in the ref tier: what they push goes into an overlay of their own
	// (named after the token: "ref_token 1", "ref_token_file <path>"),
	// which only they read, never into the cache proper. Caddyfile: `token
	// <token> ref`, `token_file <file> ref`.
	RefTokens     []string `json:"ref_tokens,omitempty"`
	RefTokenFiles []string `json:"ref_token_files,omitempty"`

	// TrustedRefs are the refs, besides each repository's default branch,
	// whose jobs push into the cache proper, which everyone substitutes
	// from. A pattern is matched as path.Match does, a `*` never crossing
	// a `/`: `main` and `release/*` name branches (refs/heads/…), a pattern
	// that starts with refs/ a whole ref (`refs/tags/v*`). Every other job,
	// on another branch or for a pull request, pushes into its
	// repository's overlay for its ref: checked as every upload is, served
	// signed with the cache's overlay key only to requests that carry a
	// credential of the same repository and ref, and never to anyone else.
	// Caddyfile: `trusted_refs <pattern>...`.
	TrustedRefs []string `json:"trusted_refs,omitempty"`

	// MaxNarSize bounds a NAR upload, compressed and uncompressed, in
	// bytes. Larger uploads get 413. Default: 8 GiB. Caddyfile:
	// `max_nar_size`, which also takes sizes such as 8GiB.
	MaxNarSize int64 `json:"max_nar_size,omitempty"`

	// MaxLogSize bounds a build log upload once its Content-Encoding is
	// undone, in bytes. Larger uploads get 413. Default: 64 MiB.
	// Caddyfile: `max_log_size`.
	MaxLogSize int64 `json:"max_log_size,omitempty"`
}
