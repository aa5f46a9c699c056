package caddyrunner

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("gitea_runner", parseGlobalOption)
}

// parseGlobalOption parses the gitea_runner global option into the app.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("gitea_runner: the global option is given more than once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "gitea_runner", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens. Syntax:
//
//	gitea_runner {
//	    instance            <url>
//	    registration_token  <token>
//	    api_token           <token>
//	    scope               instance | org <name> | repo <owner>/<name>
//	    name                <name>
//	    labels              <label>...           # repeatable
//	    capacity            <n>
//	    fetch_interval      <duration>
//	    fetch_interval_max  <duration>
//	    timeout             <duration>
//	    shutdown_timeout    <duration>
//	    state_file          <path>
//	    work_dir            <directory>
//	    env                 <key> <value>        # repeatable
//	    container {
//	        network        <mode>
//	        privileged
//	        options        <docker create options>
//	        valid_volumes  <glob>...             # repeatable
//	        docker_host    <socket> | -
//	        force_pull
//	    }
//	    nix_cache           <cache name> {
//	        keep_default_branch_runs <n>
//	        auto_push      on | off | required
//	    }
//	    actions_cache       <cache name>
//	    webhook {
//	        secret         <secret>
//	        secret_file    <file>
//	        poll_interval  <duration>
//	        url            <public URL of the gitea_runner_webhook handler>
//	    }
//	    ephemeral           [exit_when_done]
//	    trusted_jobs
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option name
	if d.NextArg() {
		return d.ArgErr()
	}
	textOptions := map[string]*string{
		"instance": &a.Instance, "registration_token": &a.RegistrationToken, "api_token": &a.APIToken,
		"name": &a.Name, "state_file": &a.StateFile, "work_dir": &a.WorkDir, "actions_cache": &a.ActionsCache,
	}
	durationOptions := map[string]*caddy.Duration{
		"fetch_interval": &a.FetchInterval, "fetch_interval_max": &a.FetchIntervalMax,
		"timeout": &a.Timeout, "shutdown_timeout": &a.ShutdownTimeout,
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] && option != "labels" && option != "env" {
			return d.Errf("gitea_runner: %s given more than once", option)
		}
		seen[option] = true
		if target, ok := textOptions[option]; ok {
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			*target = value
			continue
		}
		if target, ok := durationOptions[option]; ok {
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(value)
			if err != nil {
				return d.Errf("gitea_runner: %s %q: %v", option, value, err)
			}
			*target = caddy.Duration(dur)
			continue
		}
		switch option {
		case "nix_cache":
			if err := a.unmarshalNixCache(d); err != nil {
				return err
			}
		case "scope":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if _, err := parseScope(strings.Join(args, " ")); err != nil {
				return d.Errf("gitea_runner: %v", err)
			}
			a.Scope = strings.Join(args, " ")
		case "labels":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, arg := range args {
				// A label list from one environment variable may be comma
				// separated, as in act_runner's GITEA_RUNNER_LABELS.
				for _, l := range strings.Split(arg, ",") {
					if l = strings.TrimSpace(l); l != "" {
						a.Labels = append(a.Labels, l)
					}
				}
			}
		case "capacity":
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(value)
			if err != nil || n < 1 {
				return d.Errf("gitea_runner: capacity %q is not a positive integer", value)
			}
			a.Capacity = n
		case "env":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("gitea_runner: env takes a name and a value")
			}
			if a.Env == nil {
				a.Env = map[string]string{}
			}
			if _, dup := a.Env[args[0]]; dup {
				return d.Errf("gitea_runner: env %s given more than once", args[0])
			}
			a.Env[args[0]] = args[1]
		case "webhook":
			if err := a.unmarshalWebhook(d); err != nil {
				return err
			}
		case "ephemeral":
			a.Ephemeral = true
			for d.NextArg() {
				if d.Val() != "exit_when_done" || a.ExitWhenDone {
					return d.Errf("gitea_runner: ephemeral takes only `exit_when_done`, not %q", d.Val())
				}
				a.ExitWhenDone = true
			}
		case "trusted_jobs":
			if d.NextArg() {
				return d.ArgErr()
			}
			a.TrustedJobs = true
		case "container":
			if err := a.unmarshalContainer(d); err != nil {
				return err
			}
		default:
			return d.Errf("gitea_runner: unknown option %q", option)
		}
	}
	return nil
}

func (a *App) unmarshalContainer(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	c := new(ContainerConfig)
	textOptions := map[string]*string{"network": &c.Network, "docker_host": &c.DockerHost, "options": &c.Options}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] && option != "valid_volumes" {
			return d.Errf("gitea_runner: container %s given more than once", option)
		}
		seen[option] = true
		if target, ok := textOptions[option]; ok {
			value, err := caddyutil.SingleArg(d)
			if err != nil {
				return err
			}
			*target = value
			continue
		}
		switch option {
		case "valid_volumes":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			c.ValidVolumes = append(c.ValidVolumes, args...)
		case "privileged", "force_pull":
			if d.NextArg() {
				return d.ArgErr()
			}
			if option == "privileged" {
				c.Privileged = true
			} else {
				c.ForcePull = true
			}
		default:
			return d.Errf("gitea_runner: unknown container option %q", option)
		}
	}
	a.Container = c
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*App)(nil)

// unmarshalNixCache parses `nix_cache <name>`, with an optional block.
func (a *App) unmarshalNixCache(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	a.NixCache = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		switch option {
		case "keep_default_branch_runs":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return d.Errf("gitea_runner: keep_default_branch_runs %q is not a number of runs", value)
			}
			a.KeepDefaultBranchRuns = n
		case "auto_push":
			if value != autoPushOn && value != autoPushOff && value != autoPushRequired {
				return d.Errf("gitea_runner: auto_push %q is not on, off or required", value)
			}
			a.AutoPush = value
		default:
			return d.Errf("gitea_runner: unknown nix_cache option %q (keep_default_branch_runs, auto_push)", option)
		}
	}
	return nil
}

// unmarshalWebhook parses the `webhook` block.
func (a *App) unmarshalWebhook(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	w := new(WebhookConfig)
	textOptions := map[string]*string{"secret": &w.Secret, "secret_file": &w.SecretFile, "url": &w.URL}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if seen[option] {
			return d.Errf("gitea_runner: webhook %s given more than once", option)
		}
		seen[option] = true
		value, err := caddyutil.SingleArg(d)
		if err != nil {
			return err
		}
		if target, ok := textOptions[option]; ok {
			*target = value
			continue
		}
		if option != "poll_interval" {
			return d.Errf("gitea_runner: unknown webhook option %q (secret, secret_file, poll_interval, url)", option)
		}
		dur, err := caddy.ParseDuration(value)
		if err != nil {
			return d.Errf("gitea_runner: webhook poll_interval %q: %v", value, err)
		}
		w.PollInterval = caddy.Duration(dur)
	}
	a.Webhook = w
	return nil
}
