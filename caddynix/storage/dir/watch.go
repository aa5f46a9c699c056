package dir

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unsafe"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
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

// watchedChanges are the inotify events that change what a file holds or
// whether it is there; access times and modes change no content.
const watchedChanges = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// Watch starts reporting changes to the files in the directory's root,
// with inotify, on local filesystems only.
func (s *Store) Watch() (storage.Changes, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(s.path, &fs); err != nil {
		return nil, fmt.Errorf("finding the filesystem of %s: %w", s.path, err)
	}
	if _, local := localFilesystems[int64(fs.Type)]; !local {
		return nil, fmt.Errorf("%s is on a filesystem (type %#x) whose changes may go unreported", s.path, fs.Type)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", s.path, err)
	}
	if _, err := unix.InotifyAddWatch(fd, s.path, watchedChanges); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", s.path, err)
	}
	return &changes{fd: fd, buf: make([]byte, 64<<10)}, nil
}

// changes is an inotify watch of a cache directory, read only when asked:
// a change made before Drain is called is queued by the kernel by then, so
// Drain always reports it.
type changes struct {
	mu     sync.Mutex
	fd     int
	buf    []byte
	closed bool
}

// Drain reports the changes queued since the last call, without waiting.
func (c *changes) Drain(changed func(name string)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("the watch of the cache directory is closed")
	}
	for {
		n, err := unix.Read(c.fd, c.buf)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading changes to the cache directory: %w", err)
		}
		for offset := 0; offset+unix.SizeofInotifyEvent <= n; {
			event := (*unix.InotifyEvent)(unsafe.Pointer(&c.buf[offset]))
			nameBytes := c.buf[offset+unix.SizeofInotifyEvent : offset+unix.SizeofInotifyEvent+int(event.Len)]
			offset += unix.SizeofInotifyEvent + int(event.Len)
			switch {
			case event.Mask&unix.IN_Q_OVERFLOW != 0:
				changed("")
			case event.Mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0:
				changed("")
				return errors.New("the cache directory itself was moved, removed or unmounted")
			default:
				name := strings.TrimRight(string(nameBytes), "\x00")
				if !strings.HasPrefix(name, TempPrefix) {
					changed(name)
				}
			}
		}
	}
}

// Close ends the watch.
func (c *changes) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return unix.Close(c.fd)
}
