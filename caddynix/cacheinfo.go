package caddynix

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
)

// serveCacheInfo answers nix-cache-info. A file in the root written by `nix
// copy --to file://` is served as it is; otherwise the answer is generated
// from the configuration. The file must always be readable: on a 404 Nix
// tries to create it and calls the URL "not a binary cache" when it cannot.
func (h *Handler) serveCacheInfo(w http.ResponseWriter, r *http.Request) error {
	f, err := os.Open(filepath.Join(h.root, "nix-cache-info"))
	if err == nil {
		defer f.Close()
		info, err := f.Stat()
		if err == nil && info.Mode().IsRegular() {
			w.Header().Set("Content-Type", "text/x-nix-cache-info")
			http.ServeContent(w, r, "", info.ModTime(), f)
			return nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		h.logger.Warn("reading nix-cache-info; answering from the configuration instead")
	}
	body := h.generatedCacheInfo()
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
	return nil
}

// generatedCacheInfo is the nix-cache-info the configuration describes.
func (h *Handler) generatedCacheInfo() string {
	mass := 0
	if *h.WantMassQuery {
		mass = 1
	}
	return fmt.Sprintf("StoreDir: %s\nWantMassQuery: %d\nPriority: %d\n", h.StoreDir, mass, *h.Priority)
}
