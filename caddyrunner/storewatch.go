package caddyrunner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// A job's Nix store is watched as `cachix watch-store` and `attic
// watch-store` watch one: Nix removes a path's .lock file once it has
// registered the path, and each removal sends the watcher to the store's
// database for what was registered since, which it pushes while the
// build goes on. Nix never waits for any of it. The watcher runs inside
// the job container, as the auto-push agent (agent.go), and reads the
// store through an *os.Root of the container's root directory.

// scanBatch is how many new registrations one query reads.
const scanBatch = 256

// pushClient uploads what jobs built. A cache that stops answering
// holds a job up for minutes, not for the job's whole timeout.
var pushClient = func() *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ResponseHeaderTimeout = time.Minute
	return &http.Client{Transport: transport, Timeout: 30 * time.Minute}
}()

// agentReport is what a store watch did, as the agent hands it to the
// runner.
type agentReport struct {
	// Built are the paths the job's Nix built that still existed.
	Built []string `json:"built"`
	// Skipped are the built paths not pushed because the cache had them.
	Skipped []string `json:"skipped"`
	// Failure says why a push failed; empty when none did.
	Failure string `json:"failure,omitempty"`
	// TookNanos is the time spent pushing.
	TookNanos int64 `json:"took_ns"`
	// Finished is whether the last scan, after the job's steps, ran.
	Finished bool `json:"finished"`
}

// storeWatcher pushes what a Nix store registers from derivations.
type storeWatcher struct {
	// rootDir is the directory that holds nix/store, "/" in a job
	// container; root opens it.
	rootDir string
	root    *os.Root
	// since is when the job container started: what was registered
	// before is the image's, not the job's to push.
	since  time.Time
	pusher storePusher
	// snapshotDir holds the copy of the Nix database a scan reads.
	snapshotDir string
	logger      *zap.Logger

	baselined bool
	lastID    int64
	report    agentReport
}

// run watches the store until finishing is closed, then scans it once
// more and returns what it did.
func (w *storeWatcher) run(ctx context.Context, finishing <-chan struct{}) agentReport {
	w.pusher.root = w.root
	defer func() { _ = os.RemoveAll(w.snapshotDir) }()
	notify, err := fsnotify.NewWatcher()
	if err != nil {
		w.logger.Warn("watching the job's Nix store; what it builds is pushed at its end", zap.Error(err))
	} else {
		defer func() { _ = notify.Close() }()
		w.watch(ctx, notify, finishing)
	}
	select {
	case <-ctx.Done():
		return w.report
	case <-finishing:
	}
	w.scan(ctx, true)
	w.report.Finished = true
	return w.report
}

// watch scans the store after each path Nix registers, until finishing
// is closed.
func (w *storeWatcher) watch(ctx context.Context, notify *fsnotify.Watcher, finishing <-chan struct{}) {
	dirs := storeDirWatch{notify: notify, root: w.root, rootDir: w.rootDir}
	if err := dirs.deepen(); err != nil {
		w.logger.Warn("watching the job's Nix store; what it builds is pushed at its end", zap.Error(err))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-finishing:
			return
		case event := <-notify.Events:
			switch {
			case !dirs.atStore():
				// Nix made /nix or /nix/store: the first build is near.
				if err := dirs.deepen(); err != nil {
					w.logger.Warn("watching the job's Nix store; what it builds is pushed at its end", zap.Error(err))
				}
			case event.Has(fsnotify.Remove) && strings.HasSuffix(event.Name, ".lock"):
				w.scan(ctx, false)
				skipQueued(notify.Events)
			}
		case err := <-notify.Errors:
			// An overflowed queue loses only wake-ups: every scan reads
			// all that was registered since the last.
			w.logger.Debug("watching the job's Nix store", zap.Error(err))
			w.scan(ctx, false)
		}
	}
}

// storeDirs lead from a container's root to its Nix store. An image
// whose Nix never ran has neither /nix nor /nix/store: its first Nix
// command makes them.
var storeDirs = []string{".", "nix", "nix/store"}

// storeDirWatch watches the deepest of storeDirs that exists, until the
// store itself does.
type storeDirWatch struct {
	notify   *fsnotify.Watcher
	root     *os.Root
	rootDir  string
	watching int
	added    bool
}

func (s *storeDirWatch) atStore() bool { return s.added && s.watching == len(storeDirs)-1 }

// deepen moves the watch to the deepest of storeDirs that exists. It
// looks again after each move, since a directory made before the watch
// on its parent sent no event.
func (s *storeDirWatch) deepen() error {
	for {
		deepest := -1
		for i, dir := range storeDirs {
			fi, err := s.root.Lstat(dir)
			if err != nil || !fi.IsDir() {
				break
			}
			deepest = i
		}
		if deepest < 0 || (s.added && deepest == s.watching) {
			return nil
		}
		if s.added {
			_ = s.notify.Remove(filepath.Join(s.rootDir, storeDirs[s.watching]))
		}
		if err := s.notify.Add(filepath.Join(s.rootDir, storeDirs[deepest])); err != nil {
			return err
		}
		s.watching, s.added = deepest, true
	}
}

// skipQueued drops the events already waiting: the scan that ran saw
// what they tell of.
func skipQueued(events <-chan fsnotify.Event) {
	for {
		select {
		case <-events:
		default:
			return
		}
	}
}

// scan pushes the paths Nix built since the last scan: those of its
// registrations that this store made from a derivation, with their
// closures. After a failed upload it only counts what it finds.
func (w *storeWatcher) scan(ctx context.Context, final bool) {
	db, err := w.openDB(ctx)
	if err != nil {
		// While the job runs, the next scan tries again; only the last
		// scan's failure loses paths.
		if final && !errors.Is(err, os.ErrNotExist) {
			w.fail(fmt.Errorf("reading the job's Nix database: %w", err))
		}
		w.logger.Debug("reading the job's Nix database", zap.Error(err))
		return
	}
	defer func() { _ = db.Close() }()
	w.pusher.db = db
	for {
		regs, err := db.RegisteredAfter(ctx, w.lastID, scanBatch)
		if err != nil {
			if final {
				w.fail(err)
			}
			return
		}
		for _, reg := range regs {
			w.lastID = reg.ID
			if !reg.Built || strings.HasSuffix(reg.StorePath, ".drv") {
				continue
			}
			w.pushBuilt(ctx, reg.StorePath)
		}
		if len(regs) < scanBatch {
			return
		}
	}
}

// pushBuilt pushes one path the job built, unless a push failed before.
func (w *storeWatcher) pushBuilt(ctx context.Context, storePath string) {
	if w.report.Failure != "" {
		w.report.Built = append(w.report.Built, storePath)
		return
	}
	start := time.Now()
	had, err := w.pusher.push(ctx, storePath)
	w.report.TookNanos += int64(time.Since(start))
	if errors.Is(err, nixstore.ErrNotValid) {
		return // collected by the job since
	}
	w.report.Built = append(w.report.Built, storePath)
	switch {
	case err != nil:
		w.fail(err)
	case had:
		w.report.Skipped = append(w.report.Skipped, storePath)
	}
}

// snapshotAttempts is how often a copy of the job's database is taken
// again when Nix checkpointed it while it was copied.
const snapshotAttempts = 3

// openDB opens a copy of the store's Nix database, taken now. The first
// copy notes the last path registered before the job container started.
//
// The copy holds no lock on the job's store and no file open in it: Nix
// never waits for the watcher.
func (w *storeWatcher) openDB(ctx context.Context) (*nixstore.DB, error) {
	const dbFile = "nix/var/nix/db/db.sqlite"
	var err error
	for range snapshotAttempts {
		if err = os.RemoveAll(w.snapshotDir); err != nil {
			return nil, err
		}
		if err = os.Mkdir(w.snapshotDir, 0o700); err != nil {
			return nil, err
		}
		var before, after os.FileInfo
		if before, err = w.root.Lstat(dbFile); err != nil {
			return nil, err
		}
		if !before.Mode().IsRegular() {
			return nil, fmt.Errorf("/%s is not a regular file", dbFile)
		}
		// The WAL before the database: frames a checkpoint moves into
		// the database meanwhile are then in the copy of either.
		if err = copyFromRoot(w.root, dbFile+"-wal", filepath.Join(w.snapshotDir, "db.sqlite-wal")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if err = copyFromRoot(w.root, dbFile, filepath.Join(w.snapshotDir, "db.sqlite")); err != nil {
			return nil, err
		}
		if after, err = w.root.Lstat(dbFile); err != nil {
			return nil, err
		}
		if after.ModTime().Equal(before.ModTime()) && after.Size() == before.Size() {
			break
		}
		err = errors.New("the job's Nix kept writing its database while it was copied")
	}
	if err != nil {
		return nil, err
	}
	db, err := nixstore.OpenDB(ctx, filepath.Join(w.snapshotDir, "db.sqlite"), "/nix/store")
	if err != nil {
		return nil, err
	}
	if !w.baselined {
		if w.lastID, err = db.LastIDBefore(ctx, w.since); err != nil {
			_ = db.Close()
			return nil, err
		}
		w.baselined = true
	}
	return db, nil
}

// maxJobDB bounds the copy of a job's Nix database, which the job could
// grow without end.
const maxJobDB = 1 << 30

// copyFromRoot copies the regular file name in root to the new file to.
func copyFromRoot(root *os.Root, name, to string) error {
	// Not blocking: the job may have put a FIFO there.
	from, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer func() { _ = from.Close() }()
	fi, err := from.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("/%s is not a regular file", name)
	}
	if fi.Size() > maxJobDB {
		return fmt.Errorf("/%s has %d bytes, more than the %d this runner copies", name, fi.Size(), maxJobDB)
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, io.LimitReader(from, maxJobDB)); err != nil {
		_ = out.Close()
		return fmt.Errorf("copying /%s: %w", name, err)
	}
	return out.Close()
}

// fail records the first failure.
func (w *storeWatcher) fail(err error) {
	if w.report.Failure == "" {
		w.report.Failure = err.Error()
	}
}
