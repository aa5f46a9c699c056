package caddyrunner

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// The auto-push agent is this very binary, bind-mounted read-only into a
// container job and started there by the runner with `docker exec`, so
// that it watches the job's store from inside the job's container: the
// runner needs no more than the Docker socket it already uses, whether
// Caddy runs as root, as an unprivileged service or in a container of its
// own. The agent pushes with the job's own credential, which the job has
// anyway, and the cache checks everything it receives in full: running
// in the job's container gives the job nothing it did not have.
//
// The runner writes one line of JSON (agentRequest) to the agent's
// standard input and closes it once the job's steps are over; the agent
// then scans the store once more, writes its agentReport as one line of
// JSON to standard output and exits. Its log goes to standard error.

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  autoPushAgentCommand,
		Short: "Pushes what a job's Nix builds to the Nix cache (gitea_runner starts it in job containers)",
		Long: `
The auto-push agent of gitea_runner. The runner starts it inside a
container job with docker exec and hands it the job's upload URL and
credential on standard input; it pushes every path the job's Nix builds
until its standard input closes, then writes what it did as JSON to
standard output. It is not meant to be run by hand.`,
		Func: func(caddycmd.Flags) (int, error) {
			if err := runAutoPushAgent(os.Stdin, os.Stdout); err != nil {
				return caddy.ExitCodeFailedStartup, err
			}
			return caddy.ExitCodeSuccess, nil
		},
	})
}

// autoPushAgentCommand is the agent's caddy subcommand.
const autoPushAgentCommand = "auto-push-agent"

// agentRequest is what the runner tells the agent.
type agentRequest struct {
	UploadURL string `json:"upload_url"`
	Token     string `json:"token"`
	// Since is when the job container started.
	Since time.Time `json:"since"`
}

// maxAgentRequest bounds the request line the agent reads.
const maxAgentRequest = 64 << 10

// runAutoPushAgent reads the request from in, watches the container's
// store until in closes and writes the report to out.
func runAutoPushAgent(in io.Reader, out io.Writer) error {
	input := bufio.NewReader(io.LimitReader(in, maxAgentRequest))
	line, err := input.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("reading the runner's request: %w", err)
	}
	var req agentRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("reading the runner's request: %w", err)
	}
	if !strings.HasPrefix(req.UploadURL, "http://") && !strings.HasPrefix(req.UploadURL, "https://") {
		return fmt.Errorf("the runner's request names no upload URL (%q)", req.UploadURL)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	finishing := make(chan struct{})
	go func() {
		// The runner writes nothing more: its closing the input is the
		// end of the job's steps.
		_, _ = io.Copy(io.Discard, in)
		close(finishing)
	}()

	root, err := os.OpenRoot("/")
	if err != nil {
		return fmt.Errorf("opening the container's root: %w", err)
	}
	defer func() { _ = root.Close() }()
	work, err := os.MkdirTemp("", "cargoxx-auto-push-")
	if err != nil {
		return fmt.Errorf("making a working directory for the push (is /tmp writable?): %w", err)
	}
	defer func() { _ = os.RemoveAll(work) }()
	w := &storeWatcher{
		rootDir: "/", root: root, since: req.Since,
		pusher: storePusher{
			client: pushClient, uploadURL: strings.TrimSuffix(req.UploadURL, "/"), token: req.Token,
			tempDir: work, present: map[string]bool{},
		},
		snapshotDir: filepath.Join(work, "nix-db"),
		logger:      caddy.Log().Named("auto_push_agent"),
	}
	report := w.run(ctx, finishing)
	if err := json.NewEncoder(out).Encode(report); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if ctx.Err() != nil {
		return errors.New("stopped before the job's steps were over")
	}
	return nil
}
