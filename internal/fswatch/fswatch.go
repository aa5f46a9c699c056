// Package fswatch tells, with inotify, which files of one directory were
// created, written, replaced or removed since it was last asked, without
// waiting: the kernel queues an event before the system call that caused
// it returns, so whatever a process changed before the question is in the
// answer. It watches only filesystems whose every change reaches inotify.
package fswatch

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

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

// watchedChanges are the events that change what a file holds or whether
// it is there; access times and modes change no content. Writes through a
// shared memory mapping raise none.
const watchedChanges = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// Watch is an inotify watch of one directory, read only when asked.
type Watch struct {
	mu     sync.Mutex
	dir    string
	fd     int
	buf    []byte
	closed bool
}

// Open starts watching the files directly in dir. It fails where dir's
// changes may go unreported, such as on a network filesystem.
func Open(dir string) (*Watch, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return nil, fmt.Errorf("finding the filesystem of %s: %w", dir, err)
	}
	if _, local := localFilesystems[int64(fs.Type)]; !local {
		return nil, fmt.Errorf("%s is on a filesystem (type %#x) whose changes may go unreported", dir, fs.Type)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, watchedChanges); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	return &Watch{dir: dir, fd: fd, buf: make([]byte, 64<<10)}, nil
}

// Drain calls changed with the name of each file changed since the last
// call, and with "" when changes may have been missed. An error means
// changes are no longer reported: the directory itself was moved, removed
// or unmounted, or the watch was closed.
func (w *Watch) Drain(changed func(name string)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("the watch of %s is closed", w.dir)
	}
	for {
		n, err := unix.Read(w.fd, w.buf)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading changes to %s: %w", w.dir, err)
		}
		for offset := 0; offset+unix.SizeofInotifyEvent <= n; {
			event := (*unix.InotifyEvent)(unsafe.Pointer(&w.buf[offset]))
			nameBytes := w.buf[offset+unix.SizeofInotifyEvent : offset+unix.SizeofInotifyEvent+int(event.Len)]
			offset += unix.SizeofInotifyEvent + int(event.Len)
			switch {
			case event.Mask&unix.IN_Q_OVERFLOW != 0:
				changed("")
			case event.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0:
				changed("")
				return fmt.Errorf("%s itself was moved, removed or unmounted", w.dir)
			default:
				changed(strings.TrimRight(string(nameBytes), "\x00"))
			}
		}
	}
}

// Close ends the watch.
func (w *Watch) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return unix.Close(w.fd)
}
