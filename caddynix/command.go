package caddynix

import (
	"errors"
	"fmt"
	"os"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "nix-cache",
		Usage: "keygen|verify|gc|reindex|pin|path-info|delete …",
		Short: "Manages Nix binary caches served by nix_cache",
		Long: `
Tools for the Nix binary caches that the nix_cache handler serves.

keygen writes a new signing key pair in the format of
nix-store --generate-binary-cache-key: the secret key (mode 0600) for the
handler's secret_key_file, the public key for clients' trusted-public-keys.

verify checks a cache directory's integrity and exits non-zero on any
problem.

gc, reindex, pin, path-info and delete work on a cache's index and files:
with --root on a cache no running caddy serves, or with --address through
the admin endpoint of the caddy that serves it (the same operations are
its routes /nix-cache/gc, /nix-cache/pin, …). They print JSON.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(keygenCommand(), verifyCommand(), gcCommand(), reindexCommand(),
				pinCommand(), pathInfoCommand(), deleteCommand())
		},
	})
}

func keygenCommand() *cobra.Command {
	var name, secretPath, publicPath string
	cmd := &cobra.Command{
		Use:   "keygen --name <name> --secret-key <file> --public-key <file>",
		Short: "Generates a cache signing key pair in Nix's format",
		Example: "caddy nix-cache keygen --name cache.example.org-1 " +
			"--secret-key cache/cache.sec --public-key cache/cache.pub",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" || secretPath == "" || publicPath == "" {
				return errors.New("--name, --secret-key and --public-key are all required")
			}
			public, err := nixfmt.GenerateKeyPair(name, secretPath, publicPath)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), public.String())
			return err
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "key name, conventionally <host>-<n>, e.g. cache.example.org-1")
	cmd.Flags().StringVar(&secretPath, "secret-key", "", "file to write the secret key to (created with mode 0600; must not exist)")
	cmd.Flags().StringVar(&publicPath, "public-key", "", "file to write the public key to (must not exist)")
	return cmd
}

func verifyCommand() *cobra.Command {
	var root, s3URL string
	var publicKeyFiles []string
	var narHash bool
	cmd := &cobra.Command{
		Use:   "verify --root <dir> | --s3 <bucket URL> [--public-key <file>]… [--nar-hash]",
		Short: "Checks a binary cache directory's integrity",
		Long: `Checks every narinfo in a file:// binary cache directory: it parses and
describes the path its name says, its NAR is present and matches FileHash
and FileSize (with --nar-hash, also NarHash and NarSize, by decompressing),
its references are in the cache, and its signatures under the given public
keys verify. Prints one line per problem and exits 1 if there is any.
NARs that no narinfo names (left by an upload whose narinfo never came) and
uploads in progress are listed as notes; they do not make the cache unclean.`,
		Example: "caddy nix-cache verify --root cache/store --public-key cache/cache.pub --nar-hash",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := verify.Options{NarHash: narHash}
			for _, file := range publicKeyFiles {
				data, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("reading public key: %w", err)
				}
				key, err := signature.ParsePublicKey(strings.TrimSpace(string(data)))
				if err != nil {
					return fmt.Errorf("public key %s: %w", file, err)
				}
				opts.PublicKeys = append(opts.PublicKeys, key)
			}
			store, location, _, err := openCommandStore(cmd.Context(), root, s3URL)
			if err != nil {
				return err
			}
			defer func() { _ = store.Close() }()
			report, err := verify.Cache(cmd.Context(), store, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, note := range report.Notes {
				_, _ = fmt.Fprintln(out, "note:", note)
			}
			for _, problem := range report.Problems {
				_, _ = fmt.Fprintln(out, "problem:", problem)
			}
			_, _ = fmt.Fprintf(out, "%d narinfos checked, %d problems\n", report.Narinfos, len(report.Problems))
			if len(report.Problems) > 0 {
				return fmt.Errorf("the cache in %s has %d problems", location, len(report.Problems))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "the cache directory")
	cmd.Flags().StringVar(&s3URL, "s3", "", "the cache's bucket: s3://BUCKET[/PREFIX]?endpoint=URL[&region=R][&addressing-style=path], credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	cmd.Flags().StringArrayVar(&publicKeyFiles, "public-key", nil, "a public key file; signatures under its name must verify (repeatable)")
	cmd.Flags().BoolVar(&narHash, "nar-hash", false, "also decompress every NAR and check NarHash and NarSize")
	return cmd
}
