package caddystatus

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("host_status", parseCaddyfile)
	// The page answers its own requests, so it goes where file_server would.
	httpcaddyfile.RegisterDirectiveOrder("host_status", httpcaddyfile.Before, "file_server")
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
//	host_status [<matcher>] {
//	    refresh <duration>   # default 5s
//	    title   <text>       # default "CI host"
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive's name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "refresh":
			if !d.NextArg() {
				return d.ArgErr()
			}
			refresh, err := caddy.ParseDuration(d.Val())
			if err != nil || refresh <= 0 {
				return d.Errf("refresh %q is not a positive duration such as 5s", d.Val())
			}
			h.Refresh = caddy.Duration(refresh)
		case "title":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Title = d.Val()
		default:
			return d.Errf("unknown host_status option %q (known: refresh, title)", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
