package harness

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// ActionsClients returns the directory whose node_modules holds the
// actions toolkit's npm packages (@actions/cache, @actions/artifact,
// @actions/core) that `make actions-clients` installs into
// $ACTIONS_CLIENTS_DIR, for jobs to run with node.
func ActionsClients(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("ACTIONS_CLIENTS_DIR")
	if dir == "" {
		Missing(t, "the actions toolkit's npm clients", errors.New("ACTIONS_CLIENTS_DIR is not set (make test sets it)"))
	}
	for _, pkg := range []string{"cache", "artifact", "core"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@actions", pkg, "package.json")); err != nil {
			Missing(t, "the npm package @actions/"+pkg+" (make actions-clients installs it)", err)
		}
	}
	LookTool(t, "node")
	return dir
}
