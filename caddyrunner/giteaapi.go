package caddyrunner

import (
	"context"
	"fmt"
	"strings"

	"code.gitea.io/sdk/gitea"
)

// mintRegistrationToken asks Gitea's REST API for a runner registration
// token in the given scope ("instance", "org NAME" or "repo OWNER/NAME").
func mintRegistrationToken(ctx context.Context, instance, apiToken, scope string) (string, error) {
	client, err := gitea.NewClient(instance, gitea.SetToken(apiToken), gitea.SetContext(ctx))
	if err != nil {
		return "", fmt.Errorf("connecting to Gitea's API at %s: %w", instance, err)
	}
	kind, name, _ := strings.Cut(scope, " ")
	var token *gitea.RegistrationToken
	switch kind {
	case "", "instance":
		token, _, err = client.CreateAdminActionRunnerRegistrationToken()
	case "org":
		token, _, err = client.CreateOrgActionRunnerRegistrationToken(name)
	case "repo":
		owner, repo, _ := strings.Cut(name, "/")
		token, _, err = client.CreateRepoActionRunnerRegistrationToken(owner, repo)
	default:
		return "", fmt.Errorf("scope %q is not instance, org NAME or repo OWNER/NAME", scope)
	}
	if err != nil {
		return "", fmt.Errorf("minting a registration token (scope %s) with api_token: %w", scope, err)
	}
	return token.Token, nil
}

func trimSlash(s string) string { return strings.TrimRight(s, "/") }
