package caddyutil

import (
	"fmt"
	"os"
	"regexp"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("require_env", parseRequireEnv)
}

// envName is what an environment variable may be called.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseRequireEnv reads the global option `require_env NAME…`, which
// refuses the Caddyfile when one of the named environment variables is
// unset or empty. Caddy drops an empty {$NAME} before any option sees it,
// so a missing variable otherwise surfaces as an unrelated "wrong argument
// count"; global options are read in order, so put it first.
func parseRequireEnv(d *caddyfile.Dispenser, _ any) (any, error) {
	d.Next() // the option name
	names := d.RemainingArgs()
	if len(names) == 0 {
		return nil, d.ArgErr()
	}
	for _, name := range names {
		if !envName.MatchString(name) {
			return nil, d.Errf("require_env: %q is not an environment variable name (write the name, not {$%s})", name, name)
		}
		if os.Getenv(name) == "" {
			return nil, fmt.Errorf("this Caddyfile needs the environment variable %s, which is not set: set it (for example in the environment file the service reads) and start again", name)
		}
	}
	return nil, nil
}
