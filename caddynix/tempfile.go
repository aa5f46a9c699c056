package caddynix

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// tempPrefix starts the name of every file being written. The writer's
// process id follows it, so that a sweep can tell a crashed writer's
// leftovers from files another live process is still writing.
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
	name := path.Join(dir, tempPrefix+strconv.Itoa(os.Getpid())+"-"+hex.EncodeToString(random))
	f, err := h.dir.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("creating a temporary file in %s: %w", dir, err)
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
// process. Files of live processes, such as a running server seen from
// `caddy validate`, are left alone.
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
			pid, ok := tempFilePID(e.Name())
			if !ok || processAlive(pid) {
				continue
			}
			name := path.Join(dir, e.Name())
			if err := h.dir.Remove(name); err != nil {
				h.logger.Warn("removing an interrupted upload", zap.String("file", name), zap.Error(err))
				continue
			}
			h.logger.Info("removed an interrupted upload", zap.String("file", name))
		}
	}
}

// tempFilePID returns the writer's process id from a temporary file name.
func tempFilePID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, tempPrefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
