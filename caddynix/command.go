package caddynix

import (
	"errors"
	"fmt"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "nix-cache",
		Usage: "keygen --name <name> --secret-key <file> --public-key <file>",
		Short: "Manages Nix binary caches served by nix_cache",
		Long: `
Tools for the Nix binary caches that the nix_cache handler serves.

keygen writes a new signing key pair in the format of
nix-store --generate-binary-cache-key: the secret key (mode 0600) for the
handler's secret_key_file, the public key for clients' trusted-public-keys.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(keygenCommand())
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
			public, err := generateKeyPair(name, secretPath, publicPath)
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
