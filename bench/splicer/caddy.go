package main

import (
	"encoding/json"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// spliceChunk is how much of a spliced body one write to the client may
// cover under Caddy's write idle timeout: 2 MiB, as the node's.
const spliceChunk = 2 << 20

// served is the splicer the Caddy handler serves with: a Caddy module is
// made from its configuration, and this one has none of its own.
var served *splicer

func init() { caddy.RegisterModule(caddyHandler{}) }

// caddyHandler is the splicer as a Caddy HTTP handler.
type caddyHandler struct{}

func (caddyHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.bench_splicer", New: func() caddy.Module { return new(caddyHandler) }}
}

func (caddyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if _, idle := caddyhttp.IdleTimeoutsFromContext(r.Context()); idle != nil {
		defer idle.Override(idle.Deadline.Timeout, idle.Deadline.MinRate, spliceChunk)()
	}
	served.ServeHTTP(w, r)
	return nil
}

// serveUnderCaddy serves s on listen with Caddy's HTTP server, and its
// defaults, until the process ends.
func serveUnderCaddy(listen string, s *splicer) error {
	served = s
	config, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"splicer": map[string]any{
			"listen":          []string{listen},
			"automatic_https": map[string]any{"disable": true},
			"routes":          []any{map[string]any{"handle": []any{map[string]any{"handler": "bench_splicer"}}}},
		}}}},
	})
	if err != nil {
		return err
	}
	if err := caddy.Load(config, true); err != nil {
		return err
	}
	select {}
}

// Interface guard
var _ caddyhttp.MiddlewareHandler = caddyHandler{}
