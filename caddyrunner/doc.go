// Package caddyrunner is a Gitea Actions runner that lives inside Caddy: the
// gitea_runner app registers with a Gitea instance, polls it for jobs and runs
// each job with the act executor.
package caddyrunner
