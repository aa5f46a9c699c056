package dir

import (
	"strings"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/fswatch"
)

// Watch starts reporting changes to the files in the directory's root,
// with inotify, on local filesystems only.
func (s *Store) Watch() (storage.Changes, error) {
	w, err := fswatch.Open(s.path)
	if err != nil {
		return nil, err
	}
	return changes{w}, nil
}

// changes is an inotify watch of a cache directory that leaves out the
// temporary files of uploads.
type changes struct{ watch *fswatch.Watch }

// Drain reports the changes queued since the last call, without waiting.
func (c changes) Drain(changed func(name string)) error {
	return c.watch.Drain(func(name string) {
		if !strings.HasPrefix(name, TempPrefix) {
			changed(name)
		}
	})
}

// Close ends the watch.
func (c changes) Close() error { return c.watch.Close() }
