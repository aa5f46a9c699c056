package caddyrunner

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
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

// runnerStatus is one runner's entry in the status response.
type runnerStatus struct {
	Instance      string        `json:"instance"`
	ID            int64         `json:"id,omitempty"`
	Name          string        `json:"name"`
	Labels        []string      `json:"labels"`
	Capacity      int           `json:"capacity"`
	Draining      bool          `json:"draining"`
	Running       []runningTask `json:"running"`
	LastPoll      *time.Time    `json:"last_successful_poll,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	IdentityStore string        `json:"identity"`
}

func (d *daemon) status() runnerStatus {
	s := d.settings()
	d.mu.Lock()
	defer d.mu.Unlock()
	st := runnerStatus{
		Instance:      d.instance,
		Name:          s.name,
		Labels:        s.labelSpecs,
		Capacity:      s.capacity,
		Draining:      d.draining,
		Running:       []runningTask{},
		LastError:     d.lastErr,
		IdentityStore: d.store.String(),
	}
	if d.id != nil {
		st.ID = d.id.ID
	}
	if !d.lastPoll.IsZero() {
		t := d.lastPoll
		st.LastPoll = &t
	}
	for _, task := range d.running {
		st.Running = append(st.Running, *task)
	}
	slices.SortFunc(st.Running, func(a, b runningTask) int { return int(a.ID - b.ID) })
	return st
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
	statuses := []runnerStatus{}
	for _, d := range allDaemons() {
		statuses = append(statuses, d.status())
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]any{"runners": statuses})
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
		d.mu.Lock()
		d.draining = draining
		d.mu.Unlock()
		d.poke()
		verb := "resumed"
		if draining {
			verb = "draining"
		}
		d.logger().Info("runner "+verb+" through the admin API", zap.String("name", d.settings().name))
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Interface guard
var _ caddy.AdminRouter = (*adminAPI)(nil)
