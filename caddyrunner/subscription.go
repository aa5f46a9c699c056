package caddyrunner

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
)

// A subscription is the webhook the runner made in Gitea for itself, with
// its api_token, so that Gitea posts queued jobs to the webhook `url`.
// The runner records the webhook it made in its work dir: Gitea never
// shows a webhook's secret, and cannot change it, so the record is how the
// runner knows the webhook still signs with the configured secret, and
// which webhook to delete when the configuration drops the url.

// subscriptionRecord is what the runner remembers of the webhook it made.
type subscriptionRecord struct {
	Scope string `json:"scope"`
	ID    int64  `json:"id"`
	URL   string `json:"url"`
	// SecretDigest identifies the secret the webhook signs with without
	// storing it.
	SecretDigest string `json:"secret_digest"`
}

// subscriptionWant is the webhook the configuration asks for, or nil.
type subscriptionWant struct {
	scope  scope
	url    string
	secret []byte
}

func (w *subscriptionWant) digest() string {
	mac := hmac.New(sha256.New, w.secret)
	mac.Write([]byte("gitea_runner webhook secret\x00" + w.url))
	return hex.EncodeToString(mac.Sum(nil))
}

// matches reports whether the recorded webhook is the one wanted.
func (w *subscriptionWant) matches(rec *subscriptionRecord) bool {
	return w != nil && rec != nil && rec.Scope == w.scope.String() && rec.URL == w.url && rec.SecretDigest == w.digest()
}

// subscriptionWanted is the webhook s asks the runner to keep in Gitea.
func subscriptionWanted(s *settings) *subscriptionWant {
	if s.webhook == nil || s.webhook.url == "" || s.registration.apiToken == "" {
		return nil
	}
	return &subscriptionWant{scope: s.registration.scope, url: s.webhook.url, secret: s.webhook.secret}
}

func loadSubscription(path string) (*subscriptionRecord, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the record of the runner's webhook: %w", err)
	}
	var rec subscriptionRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("the record of the runner's webhook, %s, is damaged (remove it, and the webhook in Gitea, to start again): %w", path, err)
	}
	return &rec, nil
}

func saveSubscription(path string, rec *subscriptionRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("recording the runner's webhook: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("recording the runner's webhook: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("recording the runner's webhook: %w", err)
	}
	return nil
}

// reconcileSubscription makes Gitea's webhooks agree with s: it deletes
// the webhook the runner made when the configuration changed it or
// dropped it, and makes the one asked for, exactly once, when it is not
// there. It returns the webhook's id, or 0 when none is wanted.
func reconcileSubscription(ctx context.Context, instance string, s *settings, logger *zap.Logger) (int64, error) {
	path := s.subscriptionRecord
	rec, err := loadSubscription(path)
	if err != nil {
		return 0, err
	}
	want := subscriptionWanted(s)
	if rec == nil && want == nil {
		return 0, nil
	}
	if s.registration.apiToken == "" {
		return 0, fmt.Errorf("the runner made webhook %d in %s for %s but has no api_token to delete it with: delete it in Gitea and remove %s", rec.ID, rec.Scope, rec.URL, path)
	}

	if rec != nil && !want.matches(rec) {
		recScope, err := parseScope(rec.Scope)
		if err != nil {
			return 0, fmt.Errorf("the record of the runner's webhook, %s: %w", path, err)
		}
		hooks, err := newGiteaHooks(ctx, instance, s.registration.apiToken, recScope)
		if err != nil {
			return 0, err
		}
		if err := hooks.remove(rec.ID); err != nil {
			return 0, err
		}
		if err := os.Remove(path); err != nil {
			return 0, fmt.Errorf("forgetting the runner's deleted webhook: %w", err)
		}
		logger.Info("deleted the runner's webhook in Gitea", zap.String("scope", rec.Scope), zap.Int64("hook", rec.ID), zap.String("url", rec.URL))
		rec = nil
	}
	if want == nil {
		return 0, nil
	}

	hooks, err := newGiteaHooks(ctx, instance, s.registration.apiToken, want.scope)
	if err != nil {
		return 0, err
	}
	existing, err := hooks.list()
	if err != nil {
		return 0, err
	}
	kept := int64(0)
	for _, hook := range existing {
		if hook.Config["url"] != want.url {
			continue
		}
		if rec != nil && hook.ID == rec.ID {
			kept = hook.ID
			if !hook.Active || !slices.Contains(hook.Events, "workflow_job") || hook.Config["content_type"] != "json" {
				if err := hooks.repair(hook.ID, want.url); err != nil {
					return 0, err
				}
				logger.Info("repaired the runner's webhook in Gitea", zap.String("scope", rec.Scope), zap.Int64("hook", hook.ID))
			}
			continue
		}
		// A webhook for the same url that the runner did not record signs
		// with a secret nobody can read back: replace it with one whose
		// secret is known.
		if err := hooks.remove(hook.ID); err != nil {
			return 0, err
		}
		logger.Info("deleted a webhook for the runner's url whose secret is unknown", zap.String("scope", want.scope.String()), zap.Int64("hook", hook.ID), zap.String("url", want.url))
	}
	if kept != 0 {
		return kept, nil
	}
	id, err := hooks.create(want.url, want.secret)
	if err != nil {
		return 0, err
	}
	if err := saveSubscription(path, &subscriptionRecord{Scope: want.scope.String(), ID: id, URL: want.url, SecretDigest: want.digest()}); err != nil {
		// Unrecorded, the webhook would be replaced at the next attempt.
		return 0, err
	}
	logger.Info("created the runner's webhook in Gitea", zap.String("scope", want.scope.String()), zap.Int64("hook", id), zap.String("url", want.url))
	return id, nil
}

// subscribe keeps the runner's webhook in Gitea as the configuration asks,
// now and after every configuration change, retrying with backoff while
// Gitea fails, until polling ends.
func (d *daemon) subscribe() {
	failures := 0
	for {
		ctx, cancel := context.WithTimeout(d.pollCtx, time.Minute)
		id, err := reconcileSubscription(ctx, d.instance, d.settings(), d.logger())
		cancel()
		d.mu.Lock()
		d.hookID, d.hookErr = id, ""
		if err != nil {
			d.hookErr = err.Error()
		}
		d.mu.Unlock()
		wait := time.Duration(1 << 62) // until the configuration changes
		if err != nil {
			if d.pollCtx.Err() != nil {
				return
			}
			failures++
			wait = min(time.Second<<min(failures, 8), 5*time.Minute)
			d.logger().Warn("keeping the runner's webhook in Gitea", zap.Error(err), zap.Duration("retry_in", wait))
		} else {
			failures = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-d.pollCtx.Done():
			t.Stop()
			return
		case <-d.resubscribe:
		case <-t.C:
		}
		t.Stop()
	}
}
