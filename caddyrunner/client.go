package caddyrunner

import (
	"context"
	"net/http"
	"strings"
	"time"

	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
)

// rpcTimeout bounds every runner RPC but FetchTask, which has its own.
const rpcTimeout = 30 * time.Second

// giteaClient talks Gitea's runner protocol (Connect RPC under
// <instance>/api/actions).
type giteaClient struct {
	runnerv1connect.RunnerServiceClient
	ping pingv1connect.PingServiceClient
	// instance is Gitea's URL without a trailing slash.
	instance string
}

// newGiteaClient returns a client that authenticates as the runner with
// uuid and token; both are empty for Register.
func newGiteaClient(instance, uuid, token string) *giteaClient {
	instance = strings.TrimRight(instance, "/")
	httpClient := &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
		},
	}
	auth := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if uuid != "" {
				req.Header().Set("x-runner-uuid", uuid)
			}
			if token != "" {
				req.Header().Set("x-runner-token", token)
			}
			return next(ctx, req)
		}
	})
	base := instance + "/api/actions"
	return &giteaClient{
		RunnerServiceClient: runnerv1connect.NewRunnerServiceClient(httpClient, base, connect.WithInterceptors(auth)),
		ping:                pingv1connect.NewPingServiceClient(httpClient, base, connect.WithInterceptors(auth)),
		instance:            instance,
	}
}
