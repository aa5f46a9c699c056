package harness

// WebhookINI is the app.ini addition that lets Gitea deliver webhooks to
// loopback, where the tests' caddies listen, and at once rather than
// through its level queue.
const WebhookINI = `
[webhook]
ALLOWED_HOST_LIST = loopback

[queue.webhook_sender]
TYPE = channel
`

// WebhookSite is a site on the test's HTTP port that serves a runner's
// webhook receiver, and WebhookURL where Gitea posts to it.
const (
	WebhookSite = "http://127.0.0.1:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n\tgitea_runner_webhook\n}"
	WebhookURL  = "http://127.0.0.1:{$CADDY_HTTP_PORT}/hook"
)
