package dir

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// localFilesystems are the filesystems whose every change reaches inotify:
// those of one machine's disks and memory. On a network filesystem another
// host's writes go unreported.
var localFilesystems = map[int64]string{
	unix.EXT4_SUPER_MAGIC:      "ext4",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	0x2fc12fc1:                 "zfs",
	0xca451a4e:                 "bcachefs",
}

// Watch reports changes to the files in the directory's root with inotify,
// on local filesystems only.
func (s *Store) Watch(ctx context.Context, watching func(), changed func(name string)) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(s.path, &fs); err != nil {
		return fmt.Errorf("finding the filesystem of %s: %w", s.path, err)
	}
	if _, local := localFilesystems[int64(fs.Type)]; !local {
		return fmt.Errorf("%s is on a filesystem (type %#x) whose changes may go unreported", s.path, fs.Type)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", s.path, err)
	}
	defer func() { _ = w.Close() }()
	if err := w.Add(s.path); err != nil {
		return fmt.Errorf("watching %s: %w", s.path, err)
	}
	watching()
	for {
		select {
		case <-ctx.Done():
			return nil
		case event, ok := <-w.Events:
			if !ok {
				return errors.New("the watch of the cache directory ended")
			}
			name := filepath.Base(event.Name)
			// Access times (RecordUse) and modes change no content, and a
			// file being written is no object yet.
			if event.Op == fsnotify.Chmod || strings.HasPrefix(name, TempPrefix) {
				continue
			}
			changed(name)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("the watch of the cache directory ended")
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				changed("")
				continue
			}
			return fmt.Errorf("watching %s: %w", s.path, err)
		}
	}
}
