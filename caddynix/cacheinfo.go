package caddynix

import (
	"fmt"
	"net/http"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/serve"
)

// serveCacheInfo answers nix-cache-info from the configuration, so that the
// configured priority and mass-query setting apply even where `nix copy --to
// file://` left a file announcing only the store directory. The answer must
// always be there: on a 404 Nix tries to create it and calls the URL "not a
// binary cache" when it cannot.
func (h *Handler) serveCacheInfo(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	serve.Memory(w, r, time.Time{}, []byte(h.cacheInfo()))
	return nil
}

// cacheInfo is the nix-cache-info the configuration describes.
func (h *Handler) cacheInfo() string {
	mass := 0
	if *h.WantMassQuery {
		mass = 1
	}
	return fmt.Sprintf("StoreDir: %s\nWantMassQuery: %d\nPriority: %d\n", h.StoreDir, mass, *h.Priority)
}
