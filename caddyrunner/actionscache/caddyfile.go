package actionscache

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("actions_cache", parseCaddyfile)
	// It answers only its own paths and passes on the rest, so it goes
	// with the middleware, after encode and before every handler that may
	// answer a request (handle, route, respond, reverse_proxy, nix_cache,
	// file_server), as Mercure does: a site's fallback then never answers
	// the protocol's requests. Authentication directives (basic_auth,
	// forward_auth) still come before it.
	httpcaddyfile.RegisterDirectiveOrder("actions_cache", httpcaddyfile.After, "encode")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return handler, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	actions_cache [<matcher>] {
//	    name     <name>
//	    url      <url>
//	    root     <directory>
//	    max_size <size>       # per repository, e.g. 10GiB
//	    max_age  <duration>   # after the last use, e.g. 7d
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	textOptions := map[string]*string{"name": &h.Name, "url": &h.URL, "root": &h.Root}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] {
			return d.Errf("actions_cache: %s given more than once", option)
		}
		seen[option] = true
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		if target, ok := textOptions[option]; ok {
			*target = value
			continue
		}
		switch option {
		case "max_size":
			size, ok := caddyutil.ByteSize(value)
			if !ok || size == 0 {
				return d.Errf("actions_cache: max_size %q is not a positive size such as 10GiB", value)
			}
			h.MaxSize = size
		case "max_age":
			age, err := caddy.ParseDuration(value)
			if err != nil || age <= 0 {
				return d.Errf("actions_cache: max_age %q is not a positive duration such as 7d", value)
			}
			h.MaxAge = caddy.Duration(age)
		default:
			return d.Errf("actions_cache: unknown option %q (name, url, root, max_size, max_age)", option)
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
