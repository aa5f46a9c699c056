// Package caddyrunner is a Gitea Actions runner that lives inside Caddy. The
// gitea_runner app registers with a Gitea instance once, keeps that
// identity, polls for jobs and runs each one with the act executor (in a
// Docker container of the label's image, or on the host), streaming logs
// and results back. The runner survives config reloads: running jobs and
// the single poller carry on with the new settings.
package caddyrunner

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/caddynix"
	"github.com/cargoxx-pkgs/runner/caddyrunner/actionscache"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// daemons holds the running runners, keyed by identity, across reloads.
var daemons = caddy.NewUsagePool()

// App is the gitea_runner app: a Gitea Actions runner.
type App struct {
	// Instance is the Gitea URL, e.g. https://git.example.org. Required.
	// Caddyfile: `instance`.
	Instance string `json:"instance,omitempty"`

	// RegistrationToken registers the runner the first time it starts;
	// afterwards the stored identity is used and the token is not needed.
	// Placeholders such as {env.GITEA_RUNNER_REGISTRATION_TOKEN} are
	// expanded. Caddyfile: `registration_token`.
	RegistrationToken string `json:"registration_token,omitempty"`

	// APIToken, a Gitea API token, lets the runner mint its own registration
	// token in Scope instead of taking one. Caddyfile: `api_token`.
	APIToken string `json:"api_token,omitempty"`

	// Scope is where a registration token is minted with APIToken:
	// "instance" (the default; needs an administrator's token), "org NAME"
	// or "repo OWNER/NAME". Caddyfile: `scope instance|org NAME|repo OWNER/NAME`.
	Scope string `json:"scope,omitempty"`

	// Name is the runner's name in Gitea. Default: the host name.
	// Caddyfile: `name`.
	Name string `json:"name,omitempty"`

	// Labels are the runner's labels: `name:docker://image` runs a job in a
	// container of that image, `name:host` runs it on this host. Only the
	// names are sent to Gitea. At least one is required. Caddyfile:
	// `labels` (repeatable, several per line).
	Labels []string `json:"labels,omitempty"`

	// Capacity is how many jobs run at once. Default: 1. Caddyfile:
	// `capacity`.
	Capacity int `json:"capacity,omitempty"`

	// FetchInterval is the wait between polls when there is no work; after
	// failed polls the wait doubles, up to 5 s (or FetchIntervalMax if
	// longer), while Gitea is unreachable. Default: 2s.
	// Caddyfile: `fetch_interval`.
	FetchInterval caddy.Duration `json:"fetch_interval,omitempty"`

	// FetchIntervalMax lets the wait between polls grow while there is no
	// work: each empty answer after the first doubles it, from
	// FetchInterval up to this, and a job brings it back to FetchInterval.
	// A larger value polls Gitea less while idle and picks up the first
	// job after a quiet spell later. Default: FetchInterval, a steady
	// wait. Gitea's runner backs off to 5s (its `fetch_interval_max`).
	// Caddyfile: `fetch_interval_max`.
	FetchIntervalMax caddy.Duration `json:"fetch_interval_max,omitempty"`

	// Webhook lets Gitea tell the runner of a queued job at once, through
	// a gitea_runner_webhook handler in one of this Caddy's sites, instead
	// of the runner finding it at its next poll. Polling goes on as a
	// safety net, at the webhook's (long) poll interval. Caddyfile: a
	// `webhook` block.
	Webhook *WebhookConfig `json:"webhook,omitempty"`

	// Ephemeral registers the runner as ephemeral: it takes exactly one
	// job, reports it and stops polling, and Gitea deletes it once the
	// job is done (Gitea 1.24 or later). The stored identity is removed
	// with it, so that the next start registers again. Default: false.
	// Caddyfile: `ephemeral`, or `ephemeral exit_when_done`.
	Ephemeral bool `json:"ephemeral,omitempty"`

	// ExitWhenDone makes Caddy exit with status 0 once an ephemeral
	// runner's job is reported, so that a machine made for one job can be
	// destroyed. Caddyfile: `ephemeral exit_when_done`.
	ExitWhenDone bool `json:"exit_when_done,omitempty"`

	// Timeout bounds a job. Default: 3h. Caddyfile: `timeout`.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// ShutdownTimeout is how long running jobs may go on when Caddy exits
	// before they are cancelled (and reported as such). Default: 0, cancel
	// at once. Caddyfile: `shutdown_timeout`.
	ShutdownTimeout caddy.Duration `json:"shutdown_timeout,omitempty"`

	// StateFile keeps the runner's identity in an act_runner-compatible
	// `.runner` file (mode 0600), so an existing act_runner registration is
	// reused. Default: Caddy's storage. Caddyfile: `state_file`.
	StateFile string `json:"state_file,omitempty"`

	// WorkDir is where the runner keeps its work: the actions jobs use,
	// host jobs' work trees, each running job's credential files and the
	// lock that marks an identity in Caddy's storage as in use. No job can
	// mount it. Default: gitea_runner under Caddy's data directory.
	// Caddyfile: `work_dir`.
	WorkDir string `json:"work_dir,omitempty"`

	// Env is added to every job's environment. Caddyfile: `env KEY value`
	// (repeatable).
	Env map[string]string `json:"env,omitempty"`

	// Container configures job containers. Caddyfile: a `container` block.
	Container *ContainerConfig `json:"container,omitempty"`

	// NixCache names a nix_cache handler in this Caddy (its `name`) whose
	// binary cache jobs use: each job gets an upload credential valid only
	// while it runs, and NIX_CONFIG naming the cache as a substituter, its
	// public keys and a netrc file with the credential, so that plain `nix
	// copy --to "$CARGOXX_NIX_CACHE_UPLOAD_URL"` works. Jobs never see a signing key
	// or a long-lived secret. Caddyfile: `nix_cache`.
	NixCache string `json:"nix_cache,omitempty"`

	// KeepDefaultBranchRuns keeps, in the nix_cache's retention, what the
	// last N successful runs on each repository's default branch pushed,
	// with their closures: a run is successful when every job of it this
	// runner ran succeeded. Default: 0, none. Caddyfile:
	// `keep_default_branch_runs` inside a `nix_cache <name> { … }` block.
	KeepDefaultBranchRuns int `json:"keep_default_branch_runs,omitempty"`

	// AutoPush pushes to the nix_cache every store path a job's Nix builds,
	// with the job's own credential, whether the job succeeds or fails,
	// skipping what the cache already serves; the job's log gets a
	// summary. A container job's store is watched by the auto-push agent
	// (this caddy, started in the job's container) and each path is
	// pushed as Nix registers it; a host job's Nix notes each
	// build with a post-build-hook, and a last step pushes what was noted
	// with `nix copy`. "on" (the default): a push that fails is reported
	// in the log; "required": it fails the job; "off": jobs push only what
	// they copy themselves.
	// Caddyfile: `auto_push on|off|required` inside a `nix_cache <name> {
	// … }` block.
	AutoPush string `json:"auto_push,omitempty"`

	// ActionsCache names an actions_cache handler in this Caddy (its
	// `name`) that serves the jobs' `actions/cache`: each job gets
	// ACTIONS_CACHE_URL, and its ACTIONS_RUNTIME_TOKEN is admitted while it
	// runs, to restore its repository's entries of its own ref and the
	// default branch and to save entries stamped with its ref. Without it,
	// `actions/cache` steps find no cache server and only warn.
	// Caddyfile: `actions_cache <name>`.
	ActionsCache string `json:"actions_cache,omitempty"`

	// TrustedJobs says that every job this runner takes is trusted code,
	// and lifts the refusal to start when jobs could reach Caddy's admin
	// endpoint (a TCP endpoint with host labels or `network host`, or one
	// beyond loopback), the Docker socket, privileged containers or
	// Caddy's files through valid_volumes. Whoever reaches the admin
	// endpoint can load any configuration, including one that serves the
	// cache's signing key. Jobs for pull requests from forks still never
	// run with access to the host. Default: false. Caddyfile:
	// `trusted_jobs`.
	TrustedJobs bool `json:"trusted_jobs,omitempty"`

	instance string
	store    identityStore
	settings *settings
	key      string
	// running is the daemon this configuration joined, for the webhook
	// handler; nil until Start.
	running *atomic.Pointer[daemon]
	logger  *zap.Logger
}

// ContainerConfig configures the containers jobs run in.
type ContainerConfig struct {
	// Network is the job containers' network mode, e.g. host. Default: a
	// network act creates per job. Caddyfile: `network`.
	Network string `json:"network,omitempty"`

	// Privileged runs job containers privileged. Caddyfile: `privileged`.
	Privileged bool `json:"privileged,omitempty"`

	// Options are extra `docker create` options, e.g. "--cpus 2".
	// Caddyfile: `options`.
	Options string `json:"options,omitempty"`

	// ValidVolumes are the volumes and host paths (globs) jobs may mount.
	// Caddyfile: `valid_volumes` (repeatable).
	ValidVolumes []string `json:"valid_volumes,omitempty"`

	// DockerHost is the Docker socket to mount into job containers; "-"
	// mounts none. Default: "-": jobs never get the host's Docker socket
	// unless this names it. Caddyfile: `docker_host`.
	DockerHost string `json:"docker_host,omitempty"`

	// ForcePull pulls the label's image before every job even when it is
	// present. Default: false. Caddyfile: `force_pull`.
	ForcePull bool `json:"force_pull,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "gitea_runner",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the configuration and prepares the settings; it starts
// nothing.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.running = new(atomic.Pointer[daemon])
	repl := caddy.NewReplacer()
	a.instance = trimSlash(repl.ReplaceAll(a.Instance, ""))
	if a.instance == "" {
		return errors.New("gitea_runner: instance is required, e.g. `instance https://git.example.org`")
	}
	u, err := url.Parse(a.instance)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("gitea_runner: instance %q is not an http(s) URL", a.instance)
	}
	name := repl.ReplaceAll(a.Name, "")
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return fmt.Errorf("gitea_runner: no name given and no host name: %w", err)
		}
	}
	specs := make([]string, 0, len(a.Labels))
	for _, l := range a.Labels {
		specs = append(specs, repl.ReplaceAll(l, ""))
	}
	labels, err := parseLabels(specs)
	if err != nil {
		return fmt.Errorf("gitea_runner: %w", err)
	}
	if len(labels) == 0 {
		return errors.New("gitea_runner: at least one label is required, e.g. `labels linux:docker://alpine:3`")
	}
	container := ContainerConfig{DockerHost: "-"}
	if a.Container != nil {
		container = *a.Container
		if container.DockerHost == "" {
			container.DockerHost = "-"
		}
	}
	env := make(map[string]string, len(a.Env))
	for k, v := range a.Env {
		env[k] = repl.ReplaceAll(v, "")
	}
	registrationScope, err := parseScope(a.Scope)
	if err != nil {
		return fmt.Errorf("gitea_runner: %w", err)
	}
	workDir := repl.ReplaceAll(a.WorkDir, "")
	if workDir == "" {
		workDir = filepath.Join(caddy.AppDataDir(), "gitea_runner")
	}
	if workDir, err = filepath.Abs(workDir); err != nil {
		return fmt.Errorf("gitea_runner: work_dir: %w", err)
	}
	var webhook *webhookSettings
	if a.Webhook != nil {
		if webhook, err = a.Webhook.provision(repl); err != nil {
			return fmt.Errorf("gitea_runner: %w", err)
		}
	}
	a.settings = &settings{
		name:               name,
		labelSpecs:         specs,
		labels:             labels,
		capacity:           max(a.Capacity, 1),
		fetchInterval:      durationOr(a.FetchInterval, 2*time.Second),
		fetchMax:           time.Duration(a.FetchIntervalMax),
		timeout:            durationOr(a.Timeout, 3*time.Hour),
		shutdown:           time.Duration(a.ShutdownTimeout),
		env:                env,
		container:          container,
		workdirParent:      "workspace",
		actionCacheDir:     filepath.Join(workDir, "actions"),
		jobFilesDir:        filepath.Join(workDir, "jobs"),
		agentPath:          filepath.Join(workDir, "agent", "caddy"),
		nixCache:           a.NixCache,
		keepRuns:           a.KeepDefaultBranchRuns,
		autoPush:           cmp.Or(a.AutoPush, autoPushOn),
		actionsCache:       a.ActionsCache,
		webhook:            webhook,
		subscriptionRecord: filepath.Join(workDir, "webhook.json"),
		ephemeral:          a.Ephemeral,
		exitWhenDone:       a.ExitWhenDone,
		registration: registration{
			token:    repl.ReplaceAll(a.RegistrationToken, ""),
			apiToken: repl.ReplaceAll(a.APIToken, ""),
			scope:    registrationScope,
		},
	}
	statePath := ""
	if a.StateFile != "" {
		if statePath, err = filepath.Abs(repl.ReplaceAll(a.StateFile, "")); err != nil {
			return fmt.Errorf("gitea_runner: state_file: %w", err)
		}
		a.store = fileIdentityStore{path: statePath}
	} else {
		a.store = newStorageIdentityStore(ctx.Storage(), workDir, a.instance, name)
	}
	a.key = a.instance + "\x00" + a.store.String()
	if !a.TrustedJobs {
		admin, err := caddyutil.AdminOf(ctx)
		if err != nil {
			return fmt.Errorf("gitea_runner: cannot tell whether jobs reach Caddy's admin endpoint (%w); if every job is trusted code, say so with `trusted_jobs`", err)
		}
		protected := []string{admin.SocketPath(), caddy.AppDataDir(), statePath, workDir}
		if exposure := adminExposure(admin, labels, container, protected); exposure != "" {
			return adminRefusal(exposure)
		}
	}
	return registerMetrics(ctx.GetMetricsRegistry())
}

// Validate checks the provisioned configuration.
func (a *App) Validate() error {
	switch {
	case a.Capacity < 0:
		return fmt.Errorf("gitea_runner: capacity %d must be at least 1", a.Capacity)
	case a.FetchInterval < 0 || (a.FetchInterval > 0 && time.Duration(a.FetchInterval) < 100*time.Millisecond):
		return fmt.Errorf("gitea_runner: fetch_interval %s must be at least 100ms", time.Duration(a.FetchInterval))
	case a.FetchIntervalMax < 0 || (a.FetchIntervalMax > 0 && time.Duration(a.FetchIntervalMax) < a.settings.fetchInterval):
		return fmt.Errorf("gitea_runner: fetch_interval_max %s must not be shorter than fetch_interval (%s)", time.Duration(a.FetchIntervalMax), a.settings.fetchInterval)
	case a.Timeout < 0 || a.ShutdownTimeout < 0:
		return errors.New("gitea_runner: timeout and shutdown_timeout must not be negative")
	case a.settings.webhook != nil && a.settings.webhook.url != "" && a.settings.registration.apiToken == "":
		return errors.New("gitea_runner: webhook url makes the runner create its webhook in Gitea, which takes an api_token; without one, leave url out and add the webhook in Gitea's settings")
	case a.ExitWhenDone && !a.Ephemeral:
		return errors.New("gitea_runner: exit_when_done ends Caddy after an ephemeral runner's one job: write `ephemeral exit_when_done`")
	case !slices.Contains([]string{"", autoPushOn, autoPushOff, autoPushRequired}, a.AutoPush):
		return fmt.Errorf("gitea_runner: auto_push %q is not on, off or required", a.AutoPush)
	case a.AutoPush != "" && a.NixCache == "":
		return errors.New("gitea_runner: auto_push pushes what jobs build to a nix_cache: name it with `nix_cache <name> { auto_push … }`")
	case a.KeepDefaultBranchRuns < 0:
		return errors.New("gitea_runner: keep_default_branch_runs must not be negative")
	case a.KeepDefaultBranchRuns > 0 && a.NixCache == "":
		return errors.New("gitea_runner: keep_default_branch_runs keeps what jobs push to a nix_cache: name it with `nix_cache <name> { keep_default_branch_runs N }`")
	}
	return nil
}

// Start joins the runner with this identity, starting it if this is the
// first configuration to use it, and hands it this configuration's
// settings. It never fails because Gitea is down: registering and polling
// retry in the background.
func (a *App) Start() error {
	if a.NixCache != "" {
		// Every app has been provisioned by now, the cache handlers too.
		if _, err := caddynix.LookupCache(a.NixCache); err != nil {
			return fmt.Errorf("gitea_runner: %w", err)
		}
	}
	if a.ActionsCache != "" {
		if _, err := actionscache.Lookup(a.ActionsCache); err != nil {
			return fmt.Errorf("gitea_runner: %w", err)
		}
	}
	val, loaded, err := daemons.LoadOrNew(a.key, func() (caddy.Destructor, error) {
		return newDaemon(a.instance, a.store, a.settings, a.logger)
	})
	if err != nil {
		return fmt.Errorf("gitea_runner: %w", err)
	}
	d := val.(*daemon)
	a.running.Store(d)
	if loaded {
		d.update(a.settings, a.logger)
		a.logger.Info("runner carried over from the previous configuration", zap.String("identity", a.store.String()))
	}
	return nil
}

// Stop leaves the runner. Only when no configuration uses it any more does
// it stop: running jobs survive a reload.
func (a *App) Stop() error {
	if a.running == nil || a.running.Swap(nil) == nil {
		return nil
	}
	_, err := daemons.Delete(a.key)
	return err
}

func durationOr(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
	_ caddy.Validator   = (*App)(nil)
)
