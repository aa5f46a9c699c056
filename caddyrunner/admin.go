package caddyrunner

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the runner's status and maintenance switches on Caddy's
// admin endpoint: GET /gitea-runner/status, POST /gitea-runner/drain (stop
// taking new jobs; running ones finish) and POST /gitea-runner/resume.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.gitea_runner",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/gitea-runner/status", Handler: caddy.AdminHandlerFunc(serveStatus)},
		{Pattern: "/gitea-runner/drain", Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return setDraining(w, r, true)
		})},
		{Pattern: "/gitea-runner/resume", Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return setDraining(w, r, false)
		})},
	}
}

func allDaemons() []*daemon {
	var out []*daemon
	daemons.Range(func(_, value any) bool {
		out = append(out, value.(*daemon))
		return true
	})
	return out
}

func serveStatus(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use GET", r.Method)}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"runners": Runners()})
}

func setDraining(w http.ResponseWriter, r *http.Request, draining bool) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use POST", r.Method)}
	}
	all := allDaemons()
	if len(all) == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no gitea_runner is running")}
	}
	for _, d := range all {
		d.setDraining(draining)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Interface guard
var _ caddy.AdminRouter = (*adminAPI)(nil)
