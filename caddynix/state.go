package caddynix

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
)

// cacheStates holds, per index file, the retention state every
// configuration serving that cache shares. Old and new handlers share it
// across a reload, so the index is opened once per process.
var cacheStates = caddy.NewUsagePool()

// defaultIndexPath is where the index of the cache at root lives unless
// index_file says otherwise: under Caddy's data directory, named after the
// root, so that the cache directory keeps exactly the file:// layout.
func defaultIndexPath(root string) string {
	digest := sha256.Sum256([]byte(root))
	return filepath.Join(caddy.AppDataDir(), "nix_cache", "index-"+hex.EncodeToString(digest[:8])+".db")
}

// joinCacheState returns the shared state of the cache whose index is at
// indexPath; leave it with leaveCacheState.
func joinCacheState(indexPath string) (*retention.State, error) {
	value, _, err := cacheStates.LoadOrNew(indexPath, func() (caddy.Destructor, error) {
		return retention.NewState(indexPath), nil
	})
	if err != nil {
		return nil, err
	}
	return value.(*retention.State), nil
}

func leaveCacheState(s *retention.State) error {
	_, err := cacheStates.Delete(s.IndexPath())
	return err
}
