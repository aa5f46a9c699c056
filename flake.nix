{
  # The job image of the seed's `self-hosted` label, for users who build it
  # with Nix: `nix build .#job-image && docker load < result`. It holds what
  # `make job-image` puts in the Debian-based image (deploy/job-image/build):
  # Nix in single-user mode with deploy/job-image/nix.conf, git, curl, jq,
  # node for JavaScript actions and the usual archive tools. This project's
  # tests build the image with `make job-image`; this output is not evaluated
  # by them.
  description = "cargoxx runner: the job image";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: {
        job-image = pkgs.dockerTools.buildLayeredImageWithNixDb {
          name = "cargoxx-runner-job";
          tag = "latest";
          contents = with pkgs; [
            nix
            bashInteractive
            coreutils
            gitMinimal
            curl
            jq
            cacert
            nodejs
            gnutar
            gzip
            xz
            zstd
            bzip2
            openssh
            gnupg
            procps
            file
            patch
            less
            findutils
            gnugrep
            gnused
            gawk
            dockerTools.usrBinEnv
            dockerTools.binSh
            dockerTools.fakeNss
          ];
          extraCommands = ''
            mkdir -p tmp etc/nix
            chmod 1777 tmp
            cp ${./deploy/job-image/nix.conf} etc/nix/nix.conf
          '';
          config = {
            Env = [
              "PATH=/bin:/usr/bin"
              "USER=root"
              "NIX_PAGER=cat"
              "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
            ];
            Labels."org.opencontainers.image.title" = "cargoxx runner job image";
          };
        };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.job-image;
      });
    };
}
