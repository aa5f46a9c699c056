package caddynix

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// tempPrefix starts the name of every file being written. Its writer holds
// an exclusive flock on it until it is committed or removed, and the kernel
// drops the lock when the writer dies, so a file under this prefix that
// nobody holds is a dead writer's leftover, whatever process ids (PID 1 in
// a container, a reused PID) say.
const tempPrefix = ".upload-"

// cacheDirs are the directories of the cache layout that uploads write to.
var cacheDirs = []string{".", "nar", "log", "realisations"}

// createTemp creates a temporary file in dir, below the root.
func (h *Handler) createTemp(dir string) (*os.File, string, error) {
	if err := h.dir.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("creating %s: %w", dir, err)
	}
	random := make([]byte, 8)
	_, _ = rand.Read(random)
	name := path.Join(dir, tempPrefix+hex.EncodeToString(random))
	f, err := h.dir.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("creating a temporary file in %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		_ = h.dir.Remove(name)
		return nil, "", fmt.Errorf("locking the temporary file %s: %w", name, err)
	}
	return f, name, nil
}

// commitTemp makes a written temporary file durable and visible under name:
// fsync, rename, then fsync the directory so the rename survives a crash.
func (h *Handler) commitTemp(f *os.File, tempName, name string) error {
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("syncing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", name, err)
	}
	if err := h.dir.Rename(tempName, name); err != nil {
		return fmt.Errorf("renaming into place %s: %w", name, err)
	}
	return h.syncDir(name)
}

// syncDir makes a new name in name's directory survive a crash.
func (h *Handler) syncDir(name string) error {
	dir, err := h.dir.Open(path.Dir(name))
	if err != nil {
		return fmt.Errorf("opening the directory of %s: %w", name, err)
	}
	defer func() { _ = dir.Close() }()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("syncing the directory of %s: %w", name, err)
	}
	return nil
}

// commitTempNew makes a written temporary file durable and visible under
// name only if nothing is there yet, and reports whether it did. The
// temporary file is gone either way.
func (h *Handler) commitTempNew(f *os.File, tempName, name string) (bool, error) {
	if err := f.Sync(); err != nil {
		h.discardTemp(f, tempName)
		return false, fmt.Errorf("syncing %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		h.discardTemp(f, tempName)
		return false, fmt.Errorf("closing %s: %w", name, err)
	}
	err := h.dir.Link(tempName, name)
	if rmErr := h.dir.Remove(tempName); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
		h.logger.Warn("removing a temporary upload file", zap.String("file", tempName), zap.Error(rmErr))
	}
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("linking into place %s: %w", name, err)
	}
	return true, h.syncDir(name)
}

// discardTemp removes a temporary file that will not be committed.
func (h *Handler) discardTemp(f *os.File, tempName string) {
	_ = f.Close()
	if err := h.dir.Remove(tempName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		h.logger.Warn("removing a temporary upload file", zap.String("file", tempName), zap.Error(err))
	}
}

var swept struct {
	sync.Mutex
	roots map[string]bool
}

// sweepLeftovers removes temporary files left by writers that are no longer
// running (a crash or kill -9 in the middle of an upload), once per root and
// process. Files another live writer holds, such as a running server's seen
// from `caddy validate`, are left alone.
func (h *Handler) sweepLeftovers() {
	swept.Lock()
	defer swept.Unlock()
	if swept.roots == nil {
		swept.roots = map[string]bool{}
	}
	if swept.roots[h.root] {
		return
	}
	swept.roots[h.root] = true
	for _, dir := range cacheDirs {
		entries, err := fs.ReadDir(h.dir.FS(), dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tempPrefix) {
				continue
			}
			name := path.Join(dir, e.Name())
			removed, err := removeAbandoned(h.dir, name)
			switch {
			case err != nil:
				h.logger.Warn("removing an interrupted upload", zap.String("file", name), zap.Error(err))
			case removed:
				h.logger.Info("removed an interrupted upload", zap.String("file", name))
			}
		}
	}
}

// removeAbandoned removes the temporary file name unless a live writer
// holds its lock, and reports whether it did.
func removeAbandoned(root *os.Root, name string) (bool, error) {
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // committed or removed meanwhile
	}
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, err
	}
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// tempFileInUse reports whether a live writer holds the temporary file
// name.
func tempFileInUse(root *os.Root, name string) bool {
	f, err := root.Open(name)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}
