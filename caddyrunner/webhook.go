package caddyrunner

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// WebhookConfig lets Gitea tell the runner of queued jobs: Gitea posts a
// `workflow_job` event, signed with a shared secret, to a
// gitea_runner_webhook handler in one of this Caddy's sites, and the
// runner asks for the job at once.
type WebhookConfig struct {
	// Secret is the secret Gitea signs its webhooks with (the webhook's
	// "Secret" field in Gitea). Placeholders such as {env.WEBHOOK_SECRET}
	// are expanded. One of Secret and SecretFile is required.
	// Caddyfile: `secret`.
	Secret string `json:"secret,omitempty"`

	// SecretFile reads the secret from a file that only its owner may read
	// (mode 0600). Caddyfile: `secret_file`.
	SecretFile string `json:"secret_file,omitempty"`

	// PollInterval is the wait between polls while idle. A webhook wakes
	// the runner at once, so polling is only the safety net for a webhook
	// that never came: a job waits at most this long when Gitea could not
	// deliver. Default: 1m, a tenth of the polls of Gitea's runner idling
	// at 5 s. Caddyfile: `poll_interval`.
	PollInterval caddy.Duration `json:"poll_interval,omitempty"`

	// URL is the public address of the gitea_runner_webhook handler, as
	// Gitea reaches it. With the gitea_runner's api_token, the runner
	// creates the webhook in its scope (a system webhook for `instance`,
	// or the organisation's or repository's), keeps it up to date across
	// restarts and reloads, and deletes it when the URL is taken out of
	// the configuration. Without it, add the webhook in Gitea's settings
	// by hand. Caddyfile: `url`.
	URL string `json:"url,omitempty"`
}

// webhookSettings is a provisioned WebhookConfig.
type webhookSettings struct {
	secret       []byte
	pollInterval time.Duration
	url          string
}

// defaultWebhookPollInterval bounds the delay of a job whose webhook was
// lost, while costing Gitea one poll per runner a minute.
const defaultWebhookPollInterval = time.Minute

func (c *WebhookConfig) provision(repl *caddy.Replacer) (*webhookSettings, error) {
	s := &webhookSettings{
		pollInterval: durationOr(c.PollInterval, defaultWebhookPollInterval),
		url:          repl.ReplaceAll(c.URL, ""),
	}
	switch secret, file := repl.ReplaceAll(c.Secret, ""), repl.ReplaceAll(c.SecretFile, ""); {
	case secret != "" && file != "":
		return nil, errors.New("webhook: give secret or secret_file, not both")
	case file != "":
		value, err := nixfmt.ReadPrivateFile(file, "the webhook secret")
		if err != nil {
			return nil, fmt.Errorf("webhook: %w", err)
		}
		secret = value
		fallthrough
	default:
		if secret == "" {
			return nil, errors.New("webhook: a secret is required, the one Gitea signs webhooks with: `secret_file <file>` or `secret {env.WEBHOOK_SECRET}`")
		}
		s.secret = []byte(secret)
	}
	if s.pollInterval < time.Second {
		return nil, fmt.Errorf("webhook: poll_interval %s must be at least 1s", s.pollInterval)
	}
	if s.url != "" {
		u, err := url.Parse(s.url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("webhook: url %q is not an http(s) URL that Gitea can post to", s.url)
		}
	}
	return s, nil
}

// signatureValid reports whether signature, the hexadecimal HMAC-SHA256 of
// body that Gitea sends in X-Gitea-Signature (or, prefixed with
// "sha256=", in X-Hub-Signature-256), was made with secret.
func signatureValid(secret, body []byte, signature string) bool {
	got, err := hex.DecodeString(strings.TrimPrefix(signature, "sha256="))
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}

// workflowJobEvent is what the runner reads of Gitea's workflow_job
// webhook payload.
type workflowJobEvent struct {
	Action      string `json:"action"`
	WorkflowJob struct {
		ID     int64    `json:"id"`
		RunID  int64    `json:"run_id"`
		Labels []string `json:"labels"`
	} `json:"workflow_job"`
	Repository struct {
		FullName string `json:"full_name"`
	} `json:"repository"`
}

func parseWorkflowJobEvent(body []byte) (*workflowJobEvent, error) {
	var event workflowJobEvent
	if err := json.Unmarshal(body, &event); err != nil {
		return nil, fmt.Errorf("the workflow_job payload is not JSON as Gitea sends it (set the webhook's content type to application/json): %w", err)
	}
	return &event, nil
}

// waiting reports whether the event says a job waits for a runner.
func (e *workflowJobEvent) waiting() bool {
	return e.Action == "queued"
}
