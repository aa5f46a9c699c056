package caddyrunner

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"code.gitea.io/sdk/gitea"
)

// mintRegistrationToken asks Gitea's REST API for a runner registration
// token in the given scope.
func mintRegistrationToken(ctx context.Context, instance, apiToken string, scope scope) (string, error) {
	client, err := gitea.NewClient(instance, gitea.SetToken(apiToken), gitea.SetContext(ctx))
	if err != nil {
		return "", fmt.Errorf("connecting to Gitea's API at %s: %w", instance, err)
	}
	var token *gitea.RegistrationToken
	switch scope.kind {
	case "org":
		token, _, err = client.CreateOrgActionRunnerRegistrationToken(scope.name)
	case "repo":
		owner, repo, _ := strings.Cut(scope.name, "/")
		token, _, err = client.CreateRepoActionRunnerRegistrationToken(owner, repo)
	default:
		token, _, err = client.CreateAdminActionRunnerRegistrationToken()
	}
	if err != nil {
		return "", fmt.Errorf("minting a registration token (scope %s) with api_token: %w", scope, err)
	}
	return token.Token, nil
}

func trimSlash(s string) string { return strings.TrimRight(s, "/") }

// giteaHooks manages the webhooks of one scope through Gitea's REST API:
// the system webhooks for `instance` (which fire for every repository),
// an organisation's, or a repository's.
type giteaHooks struct {
	client *gitea.Client
	scope  scope
}

func newGiteaHooks(ctx context.Context, instance, apiToken string, scope scope) (*giteaHooks, error) {
	client, err := gitea.NewClient(instance, gitea.SetToken(apiToken), gitea.SetContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("connecting to Gitea's API at %s: %w", instance, err)
	}
	return &giteaHooks{client: client, scope: scope}, nil
}

// list returns every webhook of the scope.
func (h *giteaHooks) list() ([]*gitea.Hook, error) {
	var all []*gitea.Hook
	for page := 1; ; page++ {
		opt := gitea.ListOptions{Page: page, PageSize: 50}
		var hooks []*gitea.Hook
		var err error
		switch owner, repo, _ := strings.Cut(h.scope.name, "/"); h.scope.kind {
		case "org":
			hooks, _, err = h.client.ListOrgHooks(h.scope.name, gitea.ListHooksOptions{ListOptions: opt})
		case "repo":
			hooks, _, err = h.client.ListRepoHooks(owner, repo, gitea.ListHooksOptions{ListOptions: opt})
		default:
			hooks, _, err = h.client.ListAdminHooks(gitea.ListAdminHooksOptions{ListOptions: opt, Type: "system"})
		}
		if err != nil {
			return nil, fmt.Errorf("listing the webhooks of %s: %w", h.scope, err)
		}
		all = append(all, hooks...)
		if len(hooks) < opt.PageSize {
			return all, nil
		}
	}
}

// create adds a webhook that posts workflow_job events as JSON to url,
// signed with secret.
func (h *giteaHooks) create(url string, secret []byte) (int64, error) {
	opt := gitea.CreateHookOption{
		Type:   gitea.HookTypeGitea,
		Config: map[string]string{"url": url, "content_type": "json", "secret": string(secret)},
		Events: []string{"workflow_job"},
		Active: true,
	}
	var hook *gitea.Hook
	var err error
	switch owner, repo, _ := strings.Cut(h.scope.name, "/"); h.scope.kind {
	case "org":
		hook, _, err = h.client.CreateOrgHook(h.scope.name, opt)
	case "repo":
		hook, _, err = h.client.CreateRepoHook(owner, repo, opt)
	default:
		opt.Config["is_system_webhook"] = "true"
		hook, _, err = h.client.CreateAdminHook(opt)
	}
	if err != nil {
		return 0, fmt.Errorf("creating the webhook of %s for %s: %w", h.scope, url, err)
	}
	return hook.ID, nil
}

// repair makes a webhook active and posting workflow_job events as JSON
// again. Gitea's API cannot change a webhook's secret.
func (h *giteaHooks) repair(id int64, url string) error {
	active := true
	opt := gitea.EditHookOption{
		Config: map[string]string{"url": url, "content_type": "json"},
		Events: []string{"workflow_job"},
		Active: &active,
	}
	var err error
	switch owner, repo, _ := strings.Cut(h.scope.name, "/"); h.scope.kind {
	case "org":
		_, err = h.client.EditOrgHook(h.scope.name, id, opt)
	case "repo":
		_, err = h.client.EditRepoHook(owner, repo, id, opt)
	default:
		_, _, err = h.client.EditAdminHook(id, opt)
	}
	if err != nil {
		return fmt.Errorf("updating webhook %d of %s: %w", id, h.scope, err)
	}
	return nil
}

// remove deletes a webhook; one that is gone already counts as removed.
func (h *giteaHooks) remove(id int64) error {
	var resp *gitea.Response
	var err error
	switch owner, repo, _ := strings.Cut(h.scope.name, "/"); h.scope.kind {
	case "org":
		resp, err = h.client.DeleteOrgHook(h.scope.name, id)
	case "repo":
		resp, err = h.client.DeleteRepoHook(owner, repo, id)
	default:
		resp, err = h.client.DeleteAdminHook(id)
	}
	if err != nil && (resp == nil || resp.StatusCode != http.StatusNotFound) {
		return fmt.Errorf("deleting webhook %d of %s: %w", id, h.scope, err)
	}
	return nil
}
