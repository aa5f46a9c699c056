package caddynix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/cargoxx-pkgs/runner/caddynix/metrics"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/spf13/cobra"
)

// target is the cache a command works on: a directory no caddy serves, or
// a cache of a running caddy, reached through its admin endpoint.
type target struct {
	root, s3, indexFile string
	address, cache      string
}

func (t *target) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&t.root, "root", "", "the cache directory, when no running caddy serves it")
	cmd.Flags().StringVar(&t.s3, "s3", "", "the cache's bucket, when no running caddy serves it: s3://BUCKET[/PREFIX]?endpoint=URL[&region=R][&addressing-style=path], credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	cmd.Flags().StringVar(&t.indexFile, "index", "", "the cache's index file, when its nix_cache sets index_file (with --root)")
	cmd.Flags().StringVar(&t.address, "address", "", "the admin endpoint of the caddy serving the cache, e.g. unix//run/caddy/admin.sock")
	cmd.Flags().StringVar(&t.cache, "cache", "", "with --address: the cache's name or root, when that caddy serves several")
}

// run performs the operation name and prints its JSON answer.
func (t *target) run(cmd *cobra.Command, name string, params url.Values) error {
	op := operations[name]
	out := cmd.OutOrStdout()
	switch {
	case t.address != "" && (t.root != "" || t.s3 != ""):
		return errors.New("give either --root or --s3, or --address, not both")
	case t.address != "":
		if t.cache != "" {
			params.Set("cache", t.cache)
		}
		resp, err := caddycmd.AdminAPIRequest(t.address, op.method, "/nix-cache/"+name+"?"+params.Encode(), nil, nil)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		var pretty bytes.Buffer
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if json.Indent(&pretty, body, "", "  ") == nil {
			body = append(pretty.Bytes(), '\n')
		}
		_, err = out.Write(body)
		return err
	case t.root == "" && t.s3 == "":
		return errors.New("--root or --s3 (a cache no running caddy serves) or --address (the admin endpoint of the caddy serving it) is required")
	}
	lowerGCHeadroom()
	c, closeCache, err := t.openOffline()
	if err != nil {
		return err
	}
	defer closeCache()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	result, err := op.run(ctx, c, params, nil)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(result)
}

// offlineGCPercent is the Go collector's GOGC for a command working on a
// cache in its own process. Most of what a collection holds is a few large
// arrays of numbers, which the Go collector marks in milliseconds, while
// the default of 100 lets the heap grow to twice them: at a million paths
// that is a hundred megabytes more at the peak for no gain.
const offlineGCPercent = 25

// lowerGCHeadroom sets offlineGCPercent, unless the environment sets GOGC.
func lowerGCHeadroom() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(offlineGCPercent)
	}
}

// openOffline opens a cache and its index in this process.
func (t *target) openOffline() (*retention.Collector, func(), error) {
	store, root, storageConfig, err := openCommandStore(context.Background(), t.root, t.s3)
	if err != nil {
		return nil, nil, err
	}
	storeDir := "/nix/store"
	if data, err := storage.ReadAll(context.Background(), store, "nix-cache-info", nixfmt.MaxSmallDocumentSize); err == nil {
		if stored := nixfmt.CacheInfoStoreDir(data); stored != "" {
			storeDir = stored
		}
	}
	indexPath := t.indexFile
	if indexPath == "" {
		indexPath = defaultIndexPath(root)
	}
	logger := caddy.Log().Named("nix_cache")
	idx, err := index.Open(indexPath, 2*time.Second)
	switch {
	case errors.Is(err, index.ErrInUse):
		_ = store.Close()
		return nil, nil, fmt.Errorf("a running caddy serves the cache in %s and holds its index: use --address with that caddy's admin endpoint (e.g. --address unix//run/caddy/admin.sock)", root)
	case errors.Is(err, index.ErrCorrupt), errors.Is(err, index.ErrNotCompacted):
		logger.Warn(err.Error())
	case err != nil:
		_ = store.Close()
		return nil, nil, err
	}
	state := retention.NewOpenState(idx, store)
	c := retention.NewCollector(retention.Options{
		Store: store, StoreDir: storeDir, State: state, Index: idx,
		Logger: logger, Metrics: metrics.Retention{}, Cache: root, Grace: storageConfig.gcGrace(),
	})
	return c, func() { _ = state.Destruct(); _ = store.Close() }, nil
}

func gcCommand() *cobra.Command {
	var t target
	var maxSize, maxAge, minAge, overlayMaxAge string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc (--root <dir> | --address <admin>) [--max-size <size>] [--max-age <duration>] [--min-age <duration>] [--overlay-max-age <duration>] [--dry-run]",
		Short: "Collects a cache as its retention would",
		Long: `Deletes what the cache no longer needs, whole closures at a time: paths
not served or pushed for --max-age, then the least recently used (pull-request
pushes first) until the cache is under --max-size. Pins, the closures of kept
CI runs and paths younger than --min-age (default 1h) stay, as does anything
a kept path references. NARs no narinfo names, older than --min-age, go too.
Overlays (what refs other than the trusted ones pushed) go first: whole, when
their ref pushed nothing for --overlay-max-age (default 7d), and the least
recently pushed while the cache is over --max-size.
Through --address, limits left out are those of the cache's retention block.`,
		Example: "caddy nix-cache gc --root cache/store --max-size 40GiB --dry-run",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			params := url.Values{}
			for name, v := range map[string]string{"max_size": maxSize, "max_age": maxAge, "min_age": minAge, "overlay_max_age": overlayMaxAge} {
				if v != "" {
					params.Set(name, v)
				}
			}
			if dryRun {
				params.Set("dry_run", "true")
			}
			return t.run(cmd, "gc", params)
		},
	}
	t.flags(cmd)
	cmd.Flags().StringVar(&maxSize, "max-size", "", "delete least recently used paths until the cache is under this size, e.g. 50GiB")
	cmd.Flags().StringVar(&maxAge, "max-age", "", "delete paths not served or pushed for this long, e.g. 90d")
	cmd.Flags().StringVar(&minAge, "min-age", "", "never delete paths pushed more recently than this (default 1h)")
	cmd.Flags().StringVar(&overlayMaxAge, "overlay-max-age", "", "drop the overlays of refs that pushed nothing for this long (default 7d)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only say what would be deleted")
	return cmd
}

func reindexCommand() *cobra.Command {
	var t target
	var full bool
	cmd := &cobra.Command{
		Use:   "reindex (--root <dir> | --address <admin>) [--full]",
		Short: "Brings a cache's index in line with its files",
		Long: `Indexes every narinfo the index does not know or that changed, and forgets
records whose narinfo is gone. With --full, reads every narinfo again.
Provenance and served times of unchanged paths are kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			params := url.Values{}
			if full {
				params.Set("full", "true")
			}
			return t.run(cmd, "reindex", params)
		},
	}
	t.flags(cmd)
	cmd.Flags().BoolVar(&full, "full", false, "read every narinfo again")
	return cmd
}

func pinCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pin add|rm|ls",
		Short: "Keeps store paths' closures whatever retention decides",
	}
	var addTarget, rmTarget, lsTarget target
	add := &cobra.Command{
		Use:     "add <name> <store path>",
		Short:   "Pins a store path the cache holds under a name (moving the pin if it exists)",
		Example: "caddy nix-cache pin add release-1.2 /nix/store/…-hello-2.12 --address unix//run/caddy/admin.sock",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return addTarget.run(cmd, "pin", url.Values{"name": {args[0]}, "store_path": {args[1]}})
		},
	}
	rm := &cobra.Command{
		Use:   "rm <name>",
		Short: "Removes a pin",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return rmTarget.run(cmd, "unpin", url.Values{"name": {args[0]}})
		},
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "Lists the pins",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lsTarget.run(cmd, "pins", url.Values{})
		},
	}
	addTarget.flags(add)
	rmTarget.flags(rm)
	lsTarget.flags(ls)
	cmd.AddCommand(add, rm, ls)
	return cmd
}

func pathInfoCommand() *cobra.Command {
	var t target
	cmd := &cobra.Command{
		Use:   "path-info <store path>",
		Short: "Shows who pushed a store path and when, its sizes, references and pins, and the overlays that hold it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return t.run(cmd, "path-info", url.Values{"store_path": {args[0]}})
		},
	}
	t.flags(cmd)
	return cmd
}

func deleteCommand() *cobra.Command {
	var t target
	var withReferrers bool
	cmd := &cobra.Command{
		Use:   "delete <store path> [--with-referrers]",
		Short: "Deletes one store path from the cache",
		Long: `Deletes a store path, its narinfo first and its NAR when no other path
names it. While paths the cache keeps reference it, it refuses, unless
--with-referrers, which deletes them too. Pinned paths are refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			params := url.Values{"store_path": {args[0]}}
			if withReferrers {
				params.Set("with_referrers", "true")
			}
			return t.run(cmd, "delete", params)
		},
	}
	t.flags(cmd)
	cmd.Flags().BoolVar(&withReferrers, "with-referrers", false, "also delete every path that references it")
	return cmd
}
