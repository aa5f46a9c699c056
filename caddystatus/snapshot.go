package caddystatus

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix"
	"github.com/cargoxx-pkgs/runner/caddyrunner"
	"github.com/cargoxx-pkgs/runner/caddyrunner/actionscache"
)

// Snapshot is everything the page shows, as gathered at one moment; it is
// also the page's JSON form. What it is made of holds no secret.
type Snapshot struct {
	Title         string                     `json:"title"`
	Host          string                     `json:"host"`
	Generated     time.Time                  `json:"generated"`
	Runners       []caddyrunner.RunnerStatus `json:"runners"`
	Caches        []caddynix.CacheStatus     `json:"caches"`
	ActionsCaches []actionscache.Status      `json:"actions_caches"`
}

// gather takes a snapshot of the host.
func (h *Handler) gather(ctx context.Context) Snapshot {
	host, _ := os.Hostname()
	return Snapshot{
		Title:         h.Title,
		Host:          host,
		Generated:     time.Now(),
		Runners:       caddyrunner.Runners(),
		Caches:        caddynix.Caches(ctx),
		ActionsCaches: actionscache.Caches(),
	}
}

// serveJSON answers the snapshot as JSON.
func (h *Handler) serveJSON(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(h.gather(r.Context()))
}
