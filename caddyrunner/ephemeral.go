package caddyrunner

import (
	"context"
	"os"
	"syscall"

	"go.uber.org/zap"
)

// ephemeralDone ends an ephemeral runner once its one job is reported.
// Gitea deletes such a runner after its task, so the stored identity
// would only fail at the next start: it goes too. With exit_when_done,
// Caddy then exits as on SIGTERM, gracefully and with status 0.
func (d *daemon) ephemeralDone() {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if err := d.store.remove(ctx); err != nil {
		d.logger().Error("the ephemeral runner's job is done, but its identity stays; remove it before the next start", zap.Error(err))
	}
	if !d.settings().exitWhenDone {
		d.logger().Info("the ephemeral runner's job is done; it takes no other")
		return
	}
	d.logger().Info("the ephemeral runner's job is done; exiting (exit_when_done)")
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		d.logger().Error("exit_when_done could not signal Caddy to exit", zap.Error(err))
	}
}
