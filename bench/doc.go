// Package bench measures cargoxx runner against what users would run
// instead, side by side in the same run, and reports ratios. The benchmarks
// drive the real caddy binary, nix and the alternatives; run them with
// `make bench` (they are not part of `make test`).
package bench
