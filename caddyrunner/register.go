package caddyrunner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"go.uber.org/zap"
)

// registration is how to register when no identity is stored yet.
type registration struct {
	token    string
	apiToken string
	scope    scope
}

// scope is where a runner registered with api_token belongs: the whole
// instance, an organisation, or a repository.
type scope struct {
	kind string // "instance", "org" or "repo"
	name string // the organisation, or OWNER/NAME
}

// parseScope reads a scope as the Caddyfile and JSON write it: "instance"
// (or nothing), "org NAME" or "repo OWNER/NAME".
func parseScope(s string) (scope, error) {
	fields := strings.Fields(s)
	switch {
	case len(fields) == 0 || (len(fields) == 1 && fields[0] == "instance"):
		return scope{kind: "instance"}, nil
	case len(fields) == 2 && fields[0] == "org" && !strings.Contains(fields[1], "/"):
		return scope{kind: "org", name: fields[1]}, nil
	case len(fields) == 2 && fields[0] == "repo" && strings.Count(fields[1], "/") == 1 &&
		!strings.HasPrefix(fields[1], "/") && !strings.HasSuffix(fields[1], "/"):
		return scope{kind: "repo", name: fields[1]}, nil
	}
	return scope{}, fmt.Errorf("scope %q is not `instance`, `org NAME` or `repo OWNER/NAME`", s)
}

func (s scope) String() string {
	if s.name == "" {
		return s.kind
	}
	return s.kind + " " + s.name
}

// ensureIdentity loads the stored identity or registers a new runner,
// retrying with backoff while Gitea cannot be reached.
func (d *daemon) ensureIdentity() (*identity, error) {
	var id *identity
	err := d.retry("loading or registering the runner", func(ctx context.Context) (bool, error) {
		var err error
		id, err = d.store.load(ctx)
		if err != nil {
			return false, err
		}
		if id != nil {
			if id.Address != "" && trimSlash(id.Address) != d.instance {
				return false, fmt.Errorf("runner identity %s belongs to %s, not %s: set state_file to another file, or remove this one to register again", d.store, id.Address, d.instance)
			}
			if want := d.settings().ephemeral; id.Ephemeral != want {
				return false, fmt.Errorf("runner identity %s was registered with ephemeral %t, and the configuration says %t: remove it to register again", d.store, id.Ephemeral, want)
			}
			return false, nil
		}
		id, err = d.register(ctx)
		if err != nil {
			var cerr *connect.Error
			// A refused token will not become valid by waiting.
			if isUnauthenticated(err) || (errors.As(err, &cerr) && (cerr.Code() == connect.CodePermissionDenied || cerr.Code() == connect.CodeInvalidArgument)) {
				return false, err
			}
			return true, err
		}
		return false, d.store.save(ctx, id)
	})
	return id, err
}

// register registers a new runner with Gitea.
func (d *daemon) register(ctx context.Context) (*identity, error) {
	s := d.settings()
	token := s.registration.token
	if token == "" {
		if s.registration.apiToken == "" {
			return nil, fmt.Errorf("no runner identity in %s and no registration_token or api_token to register with", d.store)
		}
		var err error
		token, err = mintRegistrationToken(ctx, d.instance, s.registration.apiToken, s.registration.scope)
		if err != nil {
			return nil, err
		}
	}
	client := newGiteaClient(d.instance, "", "")
	pctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	if _, err := client.ping.Ping(pctx, connect.NewRequest(&pingv1.PingRequest{Data: s.name})); err != nil {
		return nil, fmt.Errorf("reaching Gitea at %s: %w", d.instance, err)
	}
	resp, err := client.Register(pctx, connect.NewRequest(&runnerv1.RegisterRequest{
		Name:      s.name,
		Token:     token,
		Version:   runnerVersion,
		Labels:    s.labels.names(),
		Ephemeral: s.ephemeral,
	}))
	if err != nil {
		return nil, fmt.Errorf("registering runner %s with %s: %w", s.name, d.instance, err)
	}
	r := resp.Msg.Runner
	d.logger().Info("registered a new runner", zap.Int64("runner_id", r.Id), zap.String("name", r.Name))
	return &identity{
		Warning: identityWarning,
		ID:      r.Id,
		UUID:    r.Uuid,
		Name:    r.Name,
		Token:   r.Token,
		Address: d.instance,
		Labels:  s.labelSpecs,
		// Run once even where Gitea does not know ephemeral runners.
		Ephemeral: s.ephemeral,
	}, nil
}

// retry runs attempt until it succeeds, returns a final error (retry
// false), or polling stops; between attempts it waits with backoff.
func (d *daemon) retry(what string, attempt func(context.Context) (retry bool, err error)) error {
	wait := time.Second
	for {
		again, err := attempt(d.pollCtx)
		if err == nil {
			return nil
		}
		if !again {
			return err
		}
		d.setError(err)
		d.logger().Warn(what+" failed; retrying", zap.Error(err), zap.Duration("in", wait))
		if !sleep(d.pollCtx, jitter(wait)) {
			return d.pollCtx.Err()
		}
		wait = min(wait*2, time.Minute)
	}
}
