package caddyrunner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"gitea.com/gitea/runner/act/container"
	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/fsnotify/fsnotify"
	"github.com/moby/moby/client"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Automatic push of a container job watches the job container's Nix
// store from the host, as `cachix watch-store` and `attic watch-store`
// watch a store: Nix removes a path's .lock file once it has registered
// the path, and each removal sends the runner to the store's database for
// what was registered since, which it pushes while the build goes on.
// Nix never waits for any of it. act leaves the job container to the
// runner, which reads the store once more after the job's steps, pushes
// what is left and only then removes the container.
//
// Everything is read through an *os.Root of the container's root
// directory: the job owns its store and may make any of it a symlink,
// which then resolves inside the container, never on the host.

// canWatchContainers reports whether this process can read the stores
// of job containers through /proc/<pid>/root: it sees the Docker daemon's
// processes (shares its PID namespace) and may open their roots (runs as
// root, or with CAP_SYS_PTRACE). Caddy as an unprivileged service, or in
// a container of its own, cannot: its container jobs run the hook.
var canWatchContainers = sync.OnceValues(func() (bool, string) {
	socket := "/var/run/docker.sock"
	if host := os.Getenv("DOCKER_HOST"); host != "" {
		var ok bool
		if socket, ok = strings.CutPrefix(host, "unix://"); !ok {
			return false, "Docker is reached at " + host + ", not through a local socket"
		}
	}
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return false, err.Error()
	}
	defer func() { _ = conn.Close() }()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return false, err.Error()
	}
	var cred *unix.Ucred
	controlErr := raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err = errors.Join(controlErr, err); err != nil {
		return false, err.Error()
	}
	if cred.Pid <= 0 {
		return false, "the Docker daemon runs in another PID namespace"
	}
	root, err := os.OpenRoot(fmt.Sprintf("/proc/%d/root", cred.Pid))
	if err != nil {
		return false, err.Error()
	}
	_ = root.Close()
	return true, ""
})

// canWatchContainers reports whether container jobs' stores can be
// watched, and logs the answer the first time.
func (d *daemon) canWatchContainers() bool {
	can, why := canWatchContainers()
	d.watchNotice.Do(func() {
		if can {
			d.logger().Info("automatic push watches the stores of container jobs")
		} else {
			d.logger().Info("automatic push of container jobs runs Nix's post-build-hook: this process cannot see into job containers (run Caddy as root on the Docker host to watch their stores instead)", zap.String("reason", why))
		}
	})
	return can
}

// scanBatch is how many new registrations one query reads.
const scanBatch = 256

// pushClient uploads what jobs built. A cache that stops answering
// holds a job up for minutes, not for the job's whole timeout.
var pushClient = func() *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ResponseHeaderTimeout = time.Minute
	return &http.Client{Transport: transport, Timeout: 30 * time.Minute}
}()

// storeWatch is the automatic push of one container job.
type storeWatch struct {
	// mountSource is the auto-push directory on the host; the job
	// container is the container that mounts it.
	mountSource string
	pusher      storePusher
	logger      *zap.Logger
	docker      client.APIClient
	events      client.EventsResult
	// finishing asks the watch for its last scan.
	finishing chan struct{}
	done      chan struct{}

	// snapshotDir holds the copy of the job's Nix database a scan reads.
	snapshotDir string

	// The state below is the loop's until done is closed.
	baselined bool
	lastID    int64
	result    autoPushOutcome
	// drained is whether the last scan ran.
	drained bool
}

// startStoreWatch starts watching for the job container that mounts the
// auto-push directory p.hostDir; it must be called before the job's
// container starts.
func startStoreWatch(ctx context.Context, p *autoPush, uploadURL, token string, logger *zap.Logger) (*storeWatch, error) {
	docker, err := container.GetDockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to Docker to watch the job's Nix store: %w", err)
	}
	// The job's files but for the auto-push directory are the runner's
	// alone: the job cannot plant links there.
	private := filepath.Dir(p.hostDir)
	w := &storeWatch{
		mountSource: p.hostDir,
		snapshotDir: filepath.Join(private, "nix-db"),
		pusher: storePusher{
			client: pushClient, uploadURL: strings.TrimSuffix(uploadURL, "/"), token: token,
			tempDir: private, present: map[string]bool{},
		},
		logger:    logger,
		docker:    docker,
		finishing: make(chan struct{}),
		done:      make(chan struct{}),
	}
	filters := make(client.Filters).Add("type", "container").Add("event", "start")
	w.events = docker.Events(ctx, client.EventsListOptions{Filters: filters})
	go w.run(ctx)
	return w, nil
}

// finish pushes what the job's Nix built and the watch has not pushed
// yet, once the job's steps are over, and returns what the watch did. The
// job's container must still be there.
func (w *storeWatch) finish() *autoPushOutcome {
	select {
	case w.finishing <- struct{}{}:
	case <-w.done:
	}
	<-w.done
	o := w.result
	if !w.drained && o.failure == "" && len(o.built) > 0 {
		o.failure = "the push did not finish (the job was cut short?)"
	}
	return &o
}

func (w *storeWatch) run(ctx context.Context) {
	defer close(w.done)
	defer func() { _ = w.docker.Close() }()
	pid, started, err := w.findContainer(ctx)
	if errors.Is(err, errNoJobContainer) {
		return
	}
	if err != nil {
		w.failAll(fmt.Errorf("finding the job container: %w", err))
		return
	}
	root, err := os.OpenRoot(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil {
		w.failAll(fmt.Errorf("opening the job container's file system (the runner needs to run as root for automatic push): %w", err))
		return
	}
	defer func() { _ = root.Close() }()
	w.pusher.root = root
	defer func() { _ = os.RemoveAll(w.snapshotDir) }()

	notify, err := fsnotify.NewWatcher()
	if err != nil {
		w.failAll(fmt.Errorf("watching the job's Nix store: %w", err))
		return
	}
	defer func() { _ = notify.Close() }()
	watch := storeDirWatch{notify: notify, root: root, proc: fmt.Sprintf("/proc/%d/root", pid)}
	if err := watch.deepen(); err != nil {
		w.logger.Warn("watching a job's Nix store; what it builds is pushed at its end", zap.Error(err))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case event := <-notify.Events:
			switch {
			case !watch.atStore():
				// Nix made /nix or /nix/store: the first build is near.
				if err := watch.deepen(); err != nil {
					w.logger.Warn("watching a job's Nix store; what it builds is pushed at its end", zap.Error(err))
				}
			case event.Has(fsnotify.Remove) && strings.HasSuffix(event.Name, ".lock"):
				w.scan(ctx, started, false)
				skipQueued(notify.Events)
			}
		case err := <-notify.Errors:
			// An overflowed queue loses only wake-ups: every scan reads
			// all that was registered since the last.
			w.logger.Debug("watching a job's Nix store", zap.Error(err))
			w.scan(ctx, started, false)
		case <-w.finishing:
			w.scan(ctx, started, true)
			w.drained = true
			return
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
	notify *fsnotify.Watcher
	root   *os.Root
	// proc is the container's root as the host sees it.
	proc     string
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
			_ = s.notify.Remove(filepath.Join(s.proc, storeDirs[s.watching]))
		}
		if err := s.notify.Add(filepath.Join(s.proc, storeDirs[deepest])); err != nil {
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

// errNoJobContainer is a job whose steps ended before its container
// started.
var errNoJobContainer = errors.New("the job container never started")

// findContainer waits for the job container to start and returns its
// first process and when it started.
func (w *storeWatch) findContainer(ctx context.Context) (int, time.Time, error) {
	for {
		select {
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		case <-w.finishing:
			w.drained = true
			return 0, time.Time{}, errNoJobContainer
		case err := <-w.events.Err:
			return 0, time.Time{}, fmt.Errorf("reading Docker's events: %w", err)
		case msg := <-w.events.Messages:
			inspect, err := w.docker.ContainerInspect(ctx, msg.Actor.ID, client.ContainerInspectOptions{})
			if err != nil || inspect.Container.State == nil {
				continue // gone already: not a job container that lives long
			}
			for _, m := range inspect.Container.Mounts {
				if m.Source != w.mountSource {
					continue
				}
				started, err := time.Parse(time.RFC3339Nano, inspect.Container.State.StartedAt)
				if err != nil {
					return 0, time.Time{}, fmt.Errorf("reading when the job container started: %w", err)
				}
				return inspect.Container.State.Pid, started, nil
			}
		}
	}
}

// scan pushes the paths Nix built since the last scan: those of its
// registrations that this store made from a derivation, with their
// closures. After a failed upload it only counts what it finds.
func (w *storeWatch) scan(ctx context.Context, started time.Time, final bool) {
	db, err := w.openDB(ctx, started)
	if err != nil {
		// While the job runs, the next scan tries again; only the last
		// scan's failure loses paths.
		if final && !errors.Is(err, os.ErrNotExist) {
			w.fail(fmt.Errorf("reading the job's Nix database: %w", err))
		}
		w.logger.Debug("reading a job's Nix database", zap.Error(err))
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
func (w *storeWatch) pushBuilt(ctx context.Context, storePath string) {
	if w.result.failure != "" {
		w.result.built = append(w.result.built, storePath)
		return
	}
	start := time.Now()
	had, err := w.pusher.push(ctx, storePath)
	w.result.took += time.Since(start)
	if errors.Is(err, nixstore.ErrNotValid) {
		return // collected by the job since
	}
	w.result.built = append(w.result.built, storePath)
	switch {
	case err != nil:
		w.result.failure = err.Error()
	case had:
		w.result.skipped = append(w.result.skipped, storePath)
	}
}

// snapshotAttempts is how often a copy of the job's database is taken
// again when Nix checkpointed it while it was copied.
const snapshotAttempts = 3

// openDB opens a copy of the job's Nix database, taken now. The first
// copy notes the last path the image brought, which is not the job's to
// push.
//
// SQLite is never pointed into the container: it resolves every symlink
// of a path itself, /proc/<pid>/root included, and would open the host's
// database instead. The copy is read through the container's root, and
// holds no lock on the job's store and no file open in it.
func (w *storeWatch) openDB(ctx context.Context, started time.Time) (*nixstore.DB, error) {
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
		if before, err = w.pusher.root.Lstat(dbFile); err != nil {
			return nil, err
		}
		if !before.Mode().IsRegular() {
			return nil, fmt.Errorf("/%s is not a regular file", dbFile)
		}
		// The WAL before the database: frames a checkpoint moves into
		// the database meanwhile are then in the copy of either.
		if err = copyFromRoot(w.pusher.root, dbFile+"-wal", filepath.Join(w.snapshotDir, "db.sqlite-wal")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if err = copyFromRoot(w.pusher.root, dbFile, filepath.Join(w.snapshotDir, "db.sqlite")); err != nil {
			return nil, err
		}
		if after, err = w.pusher.root.Lstat(dbFile); err != nil {
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
		if w.lastID, err = db.LastIDBefore(ctx, started); err != nil {
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
func (w *storeWatch) fail(err error) {
	if w.result.failure == "" {
		w.result.failure = err.Error()
	}
}

// failAll records a failure that keeps anything from being pushed.
func (w *storeWatch) failAll(err error) {
	w.logger.Warn("automatic push of a job", zap.Error(err))
	w.fail(err)
}

// removeJobContainers removes the containers, with their volumes, that
// act named with the job's prefix and left to the runner.
func removeJobContainers(prefix string, logger *zap.Logger) {
	// The job's context may be over; act allows a minute too.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	docker, err := container.GetDockerClient(ctx)
	if err != nil {
		logger.Error("removing a job's containers", zap.String("prefix", prefix), zap.Error(err))
		return
	}
	defer func() { _ = docker.Close() }()
	// The dash ends the prefix: task 1's is not task 10's.
	byName := make(client.Filters).Add("name", "^/?"+regexp.QuoteMeta(prefix)+"-")
	containers, err := docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: byName})
	if err != nil {
		logger.Error("listing a job's containers", zap.String("prefix", prefix), zap.Error(err))
	}
	for _, c := range containers.Items {
		if _, err := docker.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			logger.Error("removing a job's container", zap.Strings("names", c.Names), zap.Error(err))
		}
	}
	volumes, err := docker.VolumeList(ctx, client.VolumeListOptions{Filters: byName})
	if err != nil {
		logger.Error("listing a job's volumes", zap.String("prefix", prefix), zap.Error(err))
	}
	for _, v := range volumes.Items {
		if _, err := docker.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{}); err != nil {
			logger.Error("removing a job's volume", zap.String("volume", v.Name), zap.Error(err))
		}
	}
}
