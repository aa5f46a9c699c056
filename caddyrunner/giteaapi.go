package caddyrunner

import (
	"context"
	"fmt"
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
