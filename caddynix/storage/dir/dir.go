// Package dir is a nix_cache's storage in a local directory, in exactly
// the layout `nix copy --to file://DIR` writes, so that such a directory
// is served as it is and what is stored can be read back by `nix copy
// --from file://DIR`. Every name is resolved with os.Root, so nothing
// outside the directory can be reached, symlinks included.
package dir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// TempPrefix starts the name of every file being written. Its writer holds
// an exclusive flock on it until it is committed or removed, and the kernel
// drops the lock when the writer dies, so a file under this prefix that
// nobody holds is a dead writer's leftover, whatever process ids (PID 1 in
// a container, a reused PID) say.
const TempPrefix = ".upload-"

// layoutDirs are the directories of the layout that uploads write to.
var layoutDirs = []string{".", "nar", "log", "realisations", "retention/pins", "retention/runs"}

// Store is a cache directory.
type Store struct {
	path string
	root *os.Root
}

// Open opens the existing directory path as a cache's storage.
func Open(path string) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("resolving %q: %w", path, err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("opening the cache directory: %w", err)
	}
	return &Store{path: abs, root: root}, nil
}

// Path is the directory's absolute path.
func (s *Store) Path() string { return s.path }

// Stat describes the regular file name.
func (s *Store) Stat(_ context.Context, name string) (storage.Info, error) {
	info, err := s.root.Stat(filepath.FromSlash(name))
	if err != nil {
		return storage.Info{}, s.outside(name, err)
	}
	if !info.Mode().IsRegular() {
		return storage.Info{}, fmt.Errorf("%s is not a regular file: %w", name, fs.ErrNotExist)
	}
	return infoOf(name, info), nil
}

// infoOf describes a file.
func infoOf(name string, info fs.FileInfo) storage.Info {
	var inode uint64
	var usedAt time.Time
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		inode = st.Ino
		usedAt = time.Unix(st.Atim.Unix())
	}
	return storage.Info{
		Name:    name,
		Size:    info.Size(),
		ModTime: info.ModTime(),
		Version: version(inode, info),
		UsedAt:  usedAt,
	}
}

// version identifies a file's content as cheaply as a stat allows: a file
// is replaced by rename, so a new inode, size or modification time.
func version(inode uint64, info fs.FileInfo) string {
	buf := make([]byte, 0, 48)
	buf = strconv.AppendUint(buf, inode, 36)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, info.Size(), 36)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, info.ModTime().UnixNano(), 36)
	return string(buf)
}

// Open opens the regular file name. The object is an *os.File. Reading it
// leaves the file's access time alone where the kernel allows (the file is
// the process's own), so that the access time says when the cache last
// used it (RecordUse), not when it was last read for a check.
func (s *Store) Open(_ context.Context, name string) (storage.Object, storage.Info, error) {
	f, err := s.root.OpenFile(filepath.FromSlash(name), os.O_RDONLY|syscall.O_NOATIME, 0)
	if errors.Is(err, fs.ErrPermission) {
		f, err = s.root.Open(filepath.FromSlash(name))
	}
	if err != nil {
		return nil, storage.Info{}, s.outside(name, err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, storage.Info{}, err
	}
	if !info.Mode().IsRegular() {
		_ = f.Close()
		return nil, storage.Info{}, fmt.Errorf("%s is not a regular file: %w", name, fs.ErrNotExist)
	}
	return f, infoOf(name, info), nil
}

// outside marks the error of a name that is a symlink out of the root.
func (s *Store) outside(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if info, lerr := s.root.Lstat(filepath.FromSlash(name)); lerr == nil && info.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s: %w: %w", name, storage.ErrOutsideRoot, err)
	}
	return err
}

// Create starts writing name through a locked temporary file beside it.
func (s *Store) Create(_ context.Context, name string) (storage.Upload, error) {
	dir := path.Dir(name)
	random := make([]byte, 8)
	_, _ = rand.Read(random)
	temp := path.Join(dir, TempPrefix+hex.EncodeToString(random))
	var f *os.File
	var madeDir string
	for attempt := 0; ; attempt++ {
		// A directory this upload makes goes again if it is aborted, so
		// that a refused upload leaves nothing behind; another aborted
		// upload may remove it under this one, hence the retry.
		madeDir = ""
		if _, err := s.root.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			madeDir = dir
		}
		if err := s.root.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating %s: %w", dir, err)
		}
		var err error
		f, err = s.root.OpenFile(temp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt == 2 {
			return nil, fmt.Errorf("creating a temporary file in %s: %w", dir, err)
		}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		_ = s.root.Remove(temp)
		return nil, fmt.Errorf("locking the temporary file %s: %w", temp, err)
	}
	return &upload{store: s, file: f, temp: temp, name: name, madeDir: madeDir}, nil
}

// FreeSpace is how many bytes the filesystem of the root can still take.
func (s *Store) FreeSpace() (int64, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(s.path, &fs); err != nil {
		return 0, fmt.Errorf("asking the free space of %s: %w", s.path, err)
	}
	return int64(fs.Bavail) * int64(fs.Bsize), nil
}

// RecordUse sets the file's access time to at, leaving its modification
// time, and so its version, as it is.
func (s *Store) RecordUse(_ context.Context, name string, at time.Time) error {
	info, err := s.root.Stat(filepath.FromSlash(name))
	if err != nil {
		return err
	}
	return s.root.Chtimes(filepath.FromSlash(name), at, info.ModTime())
}

// Delete removes the file name, and the directories that it leaves empty
// (an overlay's, once it is dropped) but for the layout's own.
func (s *Store) Delete(_ context.Context, name string) error {
	if err := s.root.Remove(filepath.FromSlash(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for dir := path.Dir(name); dir != "." && dir != "/" && !slices.Contains(layoutDirs, dir); dir = path.Dir(dir) {
		// Fails, and stops, at the first directory that is not empty; an
		// upload that made it meanwhile retries.
		if s.root.Remove(filepath.FromSlash(dir)) != nil {
			break
		}
	}
	return nil
}

// List returns the regular files directly in dir, in name order, without
// temporary files.
func (s *Store) List(ctx context.Context, dir string) ([]storage.Info, error) {
	var out []storage.Info
	err := s.Walk(ctx, dir, func(info storage.Info) error {
		out = append(out, info)
		return nil
	})
	slices.SortFunc(out, func(a, b storage.Info) int { return strings.Compare(a.Name, b.Name) })
	return out, err
}

// walkBatch is how many directory entries Walk reads at a time.
const walkBatch = 1024

// Walk calls fn with the regular files directly in dir, in the
// directory's order, without temporary files.
func (s *Store) Walk(ctx context.Context, dir string, fn func(storage.Info) error) error {
	if dir == "" {
		dir = "."
	}
	f, err := s.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	for {
		entries, err := f.ReadDir(walkBatch)
		for _, e := range entries {
			if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), TempPrefix) {
				continue
			}
			info, err := e.Info()
			if err != nil {
				continue // removed meanwhile
			}
			if err := fn(infoOf(path.Join(dir, e.Name()), info)); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Close releases the directory.
func (s *Store) Close() error { return s.root.Close() }

// Temporaries lists the temporary files of uploads anywhere below the
// root, overlays included: those a live writer holds, and those whose
// writer died.
func (s *Store) Temporaries(context.Context) (live, abandoned []string, err error) {
	err = fs.WalkDir(s.root.FS(), ".", func(name string, e fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		if err != nil || e.IsDir() || !strings.HasPrefix(e.Name(), TempPrefix) {
			return err
		}
		if s.held(name) {
			live = append(live, name)
		} else {
			abandoned = append(abandoned, name)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return live, abandoned, nil
}

// RemoveAbandoned removes the temporary files whose writer died and
// returns their names.
func (s *Store) RemoveAbandoned(ctx context.Context) ([]string, error) {
	_, abandoned, err := s.Temporaries(ctx)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, name := range abandoned {
		ok, err := s.removeUnheld(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", name, err))
		}
		if ok {
			removed = append(removed, name)
		}
	}
	return removed, errors.Join(errs...)
}

// removeUnheld removes the temporary file name unless a writer holds it
// (again: it may have been created meanwhile), and reports whether it did.
func (s *Store) removeUnheld(name string) (bool, error) {
	f, err := s.root.Open(name)
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
	if err := s.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// held reports whether a live writer holds the temporary file name.
func (s *Store) held(name string) bool {
	f, err := s.root.Open(name)
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

// syncDir makes a new name in name's directory survive a crash.
func (s *Store) syncDir(name string) error {
	dir, err := s.root.Open(path.Dir(name))
	if err != nil {
		return fmt.Errorf("opening the directory of %s: %w", name, err)
	}
	defer func() { _ = dir.Close() }()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("syncing the directory of %s: %w", name, err)
	}
	return nil
}

// upload is a file being written under a temporary name.
type upload struct {
	store      *Store
	file       *os.File
	temp, name string
	// madeDir is the directory Create made for it, removed with the
	// upload when it is aborted and nothing else is in it.
	madeDir string
	done    bool
}

func (u *upload) Write(p []byte) (int, error)             { return u.file.Write(p) }
func (u *upload) ReadAt(p []byte, off int64) (int, error) { return u.file.ReadAt(p, off) }

// WriteAt writes at an offset; several chunks may be written at once.
func (u *upload) WriteAt(p []byte, off int64) (int, error) { return u.file.WriteAt(p, off) }

// Commit fsyncs the file, renames it into place and fsyncs the directory,
// so that a crash never leaves a partial file under its final name.
func (u *upload) Commit() error {
	if err := u.finish(); err != nil {
		return err
	}
	if err := u.store.root.Rename(u.temp, u.name); err != nil {
		u.remove()
		return fmt.Errorf("renaming into place %s: %w", u.name, err)
	}
	return u.store.syncDir(u.name)
}

// CommitNew links the file into place only if nothing is there yet.
func (u *upload) CommitNew() (bool, error) {
	if err := u.finish(); err != nil {
		return false, err
	}
	err := u.store.root.Link(u.temp, u.name)
	u.remove()
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("linking into place %s: %w", u.name, err)
	}
	return true, u.store.syncDir(u.name)
}

// Abort closes and removes the temporary file.
func (u *upload) Abort() {
	if u.done {
		return
	}
	u.done = true
	_ = u.file.Close()
	u.remove()
	if u.madeDir != "" && u.madeDir != "." {
		_ = u.store.root.Remove(u.madeDir) // fails, as it should, unless empty
	}
}

// finish makes the written data durable and closes the file.
func (u *upload) finish() error {
	if u.done {
		return errors.New("the upload was already committed or aborted")
	}
	u.done = true
	if err := u.file.Sync(); err != nil {
		_ = u.file.Close()
		u.remove()
		return fmt.Errorf("syncing %s: %w", u.name, err)
	}
	if err := u.file.Close(); err != nil {
		u.remove()
		return fmt.Errorf("closing %s: %w", u.name, err)
	}
	return nil
}

func (u *upload) remove() {
	_ = u.store.root.Remove(u.temp)
}

// Interface guards
var (
	_ storage.SpaceReporter = (*Store)(nil)
	_ storage.Store         = (*Store)(nil)
	_ storage.Sweeper       = (*Store)(nil)
	_ storage.UseRecorder   = (*Store)(nil)
	_ storage.ChunkedUpload = (*upload)(nil)
)
