package caddyrunner

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(WebhookHandler{})
	httpcaddyfile.RegisterHandlerDirective("gitea_runner_webhook", parseWebhookHandler)
	httpcaddyfile.RegisterDirectiveOrder("gitea_runner_webhook", httpcaddyfile.Before, "file_server")
}

// WebhookHandler receives the workflow_job webhooks of Gitea for this
// Caddy's gitea_runner and wakes its poller when a job it can run is
// queued. Requests must carry Gitea's signature made with the secret of
// the gitea_runner's `webhook` block: an unsigned one is answered 401, a
// wrongly signed one 403. Other events, and jobs for labels this runner
// lacks, are answered 204 and ignored; a job the runner will ask for is
// answered 202. However many webhooks come at once, the runner has at most
// one FetchTask in flight.
type WebhookHandler struct {
	// MaxSize bounds a webhook's body: a larger one is refused with 413
	// before it is read whole. Default: 1MiB. Caddyfile: `max_size`.
	MaxSize int64 `json:"max_size,omitempty"`

	app    *App
	logger *zap.Logger
}

// defaultMaxWebhookSize is far above a workflow_job payload (a few KiB).
const defaultMaxWebhookSize = 1 << 20

// CaddyModule returns the Caddy module information.
func (WebhookHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.gitea_runner_webhook",
		New: func() caddy.Module { return new(WebhookHandler) },
	}
}

// Provision finds this configuration's gitea_runner and its webhook secret.
func (h *WebhookHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MaxSize == 0 {
		h.MaxSize = defaultMaxWebhookSize
	}
	app, err := ctx.AppIfConfigured("gitea_runner")
	if err != nil {
		return fmt.Errorf("gitea_runner_webhook: no gitea_runner to wake: configure the gitea_runner global option with a `webhook` block (%w)", err)
	}
	h.app = app.(*App)
	if h.app.settings.webhook == nil {
		return errors.New("gitea_runner_webhook: the gitea_runner has no `webhook { secret_file … }` block to check Gitea's signatures with")
	}
	return nil
}

// Validate checks the configuration.
func (h *WebhookHandler) Validate() error {
	if h.MaxSize < 0 {
		return fmt.Errorf("gitea_runner_webhook: max_size %d must not be negative", h.MaxSize)
	}
	return nil
}

func (h *WebhookHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("a webhook is a POST, not %s", r.Method))
	}
	if r.ContentLength > h.MaxSize {
		webhooksTotal.WithLabelValues("too_large").Inc()
		return caddyhttp.Error(http.StatusRequestEntityTooLarge, fmt.Errorf("webhook of %d bytes is over max_size %d", r.ContentLength, h.MaxSize))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.MaxSize))
	if err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			webhooksTotal.WithLabelValues("too_large").Inc()
			return caddyhttp.Error(http.StatusRequestEntityTooLarge, fmt.Errorf("webhook body is over max_size %d", h.MaxSize))
		}
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading the webhook: %w", err))
	}
	signature := r.Header.Get("X-Gitea-Signature")
	if signature == "" {
		signature = r.Header.Get("X-Hub-Signature-256")
	}
	switch {
	case signature == "":
		webhooksTotal.WithLabelValues("unsigned").Inc()
		h.logger.Warn("refused an unsigned webhook: set the webhook's secret in Gitea", zap.String("remote_ip", r.RemoteAddr))
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("the webhook is not signed"))
	case !signatureValid(h.app.settings.webhook.secret, body, signature):
		webhooksTotal.WithLabelValues("bad_signature").Inc()
		h.logger.Warn("refused a webhook with a wrong signature: the secret in Gitea differs from the runner's", zap.String("remote_ip", r.RemoteAddr))
		return caddyhttp.Error(http.StatusForbidden, errors.New("the webhook's signature does not match the secret"))
	}
	event := r.Header.Get("X-Gitea-Event-Type")
	if event == "" {
		event = r.Header.Get("X-Gitea-Event")
	}
	if event != "workflow_job" {
		webhooksTotal.WithLabelValues("ignored").Inc()
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	job, err := parseWorkflowJobEvent(body)
	if err != nil {
		webhooksTotal.WithLabelValues("bad_request").Inc()
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	d := h.app.running.Load()
	if d == nil {
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the gitea_runner is not running"))
	}
	if !job.waiting() || !d.canRun(job.WorkflowJob.Labels) {
		webhooksTotal.WithLabelValues("ignored").Inc()
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	webhooksTotal.WithLabelValues("woke").Inc()
	d.notify()
	h.logger.Debug("a queued job woke the runner",
		zap.String("repository", job.Repository.FullName),
		zap.Int64("run", job.WorkflowJob.RunID),
		zap.Int64("job", job.WorkflowJob.ID),
		zap.Strings("labels", job.WorkflowJob.Labels))
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// canRun reports whether the runner has every label a job runs on, as
// Gitea requires of the runner it gives the job to.
func (d *daemon) canRun(runsOn []string) bool {
	names := d.settings().labels.names()
	for _, l := range runsOn {
		if !slices.Contains(names, l) {
			return false
		}
	}
	return len(runsOn) > 0
}

// parseWebhookHandler parses the gitea_runner_webhook directive:
//
//	gitea_runner_webhook {
//	    max_size <size>
//	}
func parseWebhookHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(WebhookHandler)
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return handler, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens.
func (h *WebhookHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "max_size":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(d.Val())
			if err != nil {
				return d.Errf("gitea_runner_webhook: max_size %q: %v", d.Val(), err)
			}
			h.MaxSize = int64(size)
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("gitea_runner_webhook: unknown option %q (max_size)", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*WebhookHandler)(nil)
	_ caddy.Validator             = (*WebhookHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*WebhookHandler)(nil)
	_ caddyfile.Unmarshaler       = (*WebhookHandler)(nil)
)
