package caddyrunner

import (
	"bytes"
	"cmp"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"gitea.com/gitea/runner/act/container"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
	"go.uber.org/zap"
)

// The runner's side of a container job's automatic push: it waits for
// the job's container, starts the auto-push agent in it (agent.go) and,
// once the job's steps are over, asks it for its last scan and report.
// act leaves the job container to the runner until then.

// jobAgentPath is where a container job finds the auto-push agent.
const jobAgentPath = "/run/cargoxx/caddy"

// installedAgents are the agents installed in work directories by this
// process, by their path, with why installing failed.
var installedAgents = struct {
	sync.Mutex
	errs map[string]error
}{errs: map[string]error{}}

// installAgent copies this process's own executable to agentPath, once
// per process, for container jobs to mount. The copy lives in the work
// directory because that has the same path for the Docker daemon as for
// this process, also when Caddy runs in a container of its own; and it is
// of the running binary, which an upgrade on disk does not change.
func installAgent(agentPath string) error {
	installedAgents.Lock()
	defer installedAgents.Unlock()
	if err, done := installedAgents.errs[agentPath]; done {
		return err
	}
	err := copyExecutable(agentPath)
	installedAgents.errs[agentPath] = err
	return err
}

func copyExecutable(agentPath string) error {
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("reading this caddy's executable: %w", err)
	}
	defer func() { _ = self.Close() }()
	if err := checkStatic(self); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(agentPath), 0o755); err != nil {
		return fmt.Errorf("installing the auto-push agent: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(agentPath), ".caddy-*")
	if err != nil {
		return fmt.Errorf("installing the auto-push agent: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := self.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(tmp, self); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("installing the auto-push agent: %w", err)
	}
	if err := errors.Join(tmp.Chmod(0o755), tmp.Close()); err != nil {
		return fmt.Errorf("installing the auto-push agent: %w", err)
	}
	// A rename: a running job's mount keeps the file it mounted.
	if err := os.Rename(tmp.Name(), agentPath); err != nil {
		return fmt.Errorf("installing the auto-push agent: %w", err)
	}
	return nil
}

// checkStatic makes sure the executable needs no dynamic loader: a job's
// image may have none, or another C library.
func checkStatic(exe io.ReaderAt) error {
	f, err := elf.NewFile(exe)
	if err != nil {
		return fmt.Errorf("reading this caddy's executable: %w", err)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.New("this caddy is linked dynamically (built with cgo), and job images may lack its C library: build it with CGO_ENABLED=0, as make build and the container image do")
		}
	}
	return nil
}

// pushAgent installs the auto-push agent for the jobs of s, the first
// time, and returns its path; "" when container jobs must run the hook
// instead. It logs which, once.
func (d *daemon) pushAgent(s *settings) string {
	err := installAgent(s.agentPath)
	d.watchNotice.Do(func() {
		if err != nil {
			d.logger().Warn("automatic push of container jobs runs Nix's post-build-hook and a last nix copy step: the auto-push agent cannot be installed", zap.Error(err))
		} else {
			d.logger().Info("automatic push watches the stores of container jobs", zap.String("agent", s.agentPath))
		}
	})
	if err != nil {
		return ""
	}
	return s.agentPath
}

// storeWatch is the automatic push of one container job.
type storeWatch struct {
	// mountSource is the auto-push directory on the host; the job
	// container is the container that mounts it.
	mountSource string
	uploadURL   string
	token       string
	logger      *zap.Logger
	docker      client.APIClient
	events      client.EventsResult
	// finishing asks the agent for its last scan.
	finishing chan struct{}
	done      chan struct{}

	// report is the agent's, once done is closed; failure says why there
	// is none.
	report  agentReport
	failure string
}

// startStoreWatch starts waiting for the job container that mounts the
// auto-push directory p.hostDir; it must be called before the job's
// container starts.
func startStoreWatch(ctx context.Context, p *autoPush, logger *zap.Logger) (*storeWatch, error) {
	docker, err := container.GetDockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to Docker to watch the job's Nix store: %w", err)
	}
	w := &storeWatch{
		mountSource: p.hostDir,
		uploadURL:   p.uploadURL,
		token:       p.token,
		logger:      logger,
		docker:      docker,
		finishing:   make(chan struct{}),
		done:        make(chan struct{}),
	}
	filters := make(client.Filters).Add("type", "container").Add("event", "start")
	w.events = docker.Events(ctx, client.EventsListOptions{Filters: filters})
	go w.run(ctx)
	return w, nil
}

// finish has the agent push what the job's Nix built and it has not
// pushed yet, once the job's steps are over, and returns what it did.
// The job's container must still be there.
func (w *storeWatch) finish() *autoPushOutcome {
	select {
	case w.finishing <- struct{}{}:
	case <-w.done:
	}
	<-w.done
	o := &autoPushOutcome{
		built: w.report.Built, skipped: w.report.Skipped,
		failure: cmp.Or(w.failure, w.report.Failure), took: time.Duration(w.report.TookNanos),
	}
	if !w.report.Finished && o.failure == "" && len(o.built) > 0 {
		o.failure = "the push did not finish (the job was cut short?)"
	}
	return o
}

// maxAgentReport bounds what the runner reads of the agent's report and
// log.
const (
	maxAgentReport = 16 << 20
	maxAgentLog    = 4 << 10
)

func (w *storeWatch) run(ctx context.Context) {
	defer close(w.done)
	defer func() { _ = w.docker.Close() }()
	id, started, err := w.findContainer(ctx)
	if errors.Is(err, errNoJobContainer) {
		w.report.Finished = true
		return
	}
	if err != nil {
		w.failAll(fmt.Errorf("finding the job container: %w", err))
		return
	}
	exec, err := w.docker.ExecCreate(ctx, id, client.ExecCreateOptions{
		Cmd:          []string{jobAgentPath, autoPushAgentCommand},
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		WorkingDir:   "/",
	})
	if err != nil {
		w.failAll(fmt.Errorf("starting the auto-push agent in the job container: %w", err))
		return
	}
	attached, err := w.docker.ExecAttach(ctx, exec.ID, client.ExecAttachOptions{})
	if err != nil {
		w.failAll(fmt.Errorf("starting the auto-push agent in the job container: %w", err))
		return
	}
	defer attached.Close()
	request, err := json.Marshal(agentRequest{UploadURL: w.uploadURL, Token: w.token, Since: started})
	if err != nil {
		w.failAll(err)
		return
	}
	if _, err := attached.Conn.Write(append(request, '\n')); err != nil {
		w.failAll(fmt.Errorf("talking to the auto-push agent: %w", err))
		return
	}

	var stdout, stderr boundedBuffer
	stdout.limit, stderr.limit = maxAgentReport, maxAgentLog
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(&stdout, &stderr, attached.Reader)
		copied <- err
	}()
	select {
	case <-ctx.Done():
		return
	case <-w.finishing:
		if err := attached.CloseWrite(); err != nil {
			w.failAll(fmt.Errorf("telling the auto-push agent the job is over: %w", err))
			return
		}
		select {
		case <-ctx.Done():
			return
		case err = <-copied:
		}
	case err = <-copied:
		// The agent ended before the job's steps did.
	}
	if err != nil {
		w.failAll(fmt.Errorf("reading the auto-push agent's report: %w", err))
		return
	}
	if stderr.Len() > 0 {
		w.logger.Debug("auto-push agent", zap.String("log", stderr.String()))
	}
	if stdout.truncated || json.Unmarshal(stdout.Bytes(), &w.report) != nil {
		why := strings.TrimSpace(stderr.String())
		if inspect, err := w.docker.ExecInspect(ctx, exec.ID, client.ExecInspectOptions{}); err == nil {
			why = fmt.Sprintf("exit code %d: %s", inspect.ExitCode, why)
		}
		w.failAll(fmt.Errorf("the auto-push agent in the job container gave no report (%s)", truncate(why, 500)))
	}
}

// boundedBuffer keeps the first limit bytes written to it and notes
// whether there were more.
type boundedBuffer struct {
	bytes.Buffer
	limit     int
	truncated bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.Len(); len(p) > room {
		b.truncated = true
		_, _ = b.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

// errNoJobContainer is a job whose steps ended before its container
// started.
var errNoJobContainer = errors.New("the job container never started")

// findContainer waits for the job container to start and returns its ID
// and when it started.
func (w *storeWatch) findContainer(ctx context.Context) (string, time.Time, error) {
	for {
		select {
		case <-ctx.Done():
			return "", time.Time{}, ctx.Err()
		case <-w.finishing:
			return "", time.Time{}, errNoJobContainer
		case err := <-w.events.Err:
			return "", time.Time{}, fmt.Errorf("reading Docker's events: %w", err)
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
					return "", time.Time{}, fmt.Errorf("reading when the job container started: %w", err)
				}
				return inspect.Container.ID, started, nil
			}
		}
	}
}

// failAll records a failure that keeps anything from being pushed.
func (w *storeWatch) failAll(err error) {
	w.logger.Warn("automatic push of a job", zap.Error(err))
	if w.failure == "" {
		w.failure = err.Error()
	}
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
