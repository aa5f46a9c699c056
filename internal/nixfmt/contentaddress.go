// Package nixfmt holds the parts of Nix's formats that the cache checks
// and that know nothing of Caddy.
package nixfmt

import (
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// CheckContentAddress checks a narinfo's CA value as Nix parses it
// (ContentAddress::parse): `text:sha256:<hash>`, or `fixed:[r:]<algo>:<hash>`
// with the hash in base16, nix32 or base64 and of the algorithm's length.
// `fixed:git:` needs an experimental feature most clients lack, which makes
// them fail on the whole narinfo, so it is refused too.
func CheckContentAddress(ca string) error {
	method, rest, ok := strings.Cut(ca, ":")
	if !ok {
		return fmt.Errorf("CA %q is not in the form <method>:<algo>:<hash>", ca)
	}
	switch method {
	case "text":
	case "fixed":
		if strings.HasPrefix(rest, "git:") {
			return fmt.Errorf("CA %q uses git hashing, which Nix reads only with the experimental git-hashing feature", ca)
		}
		rest = strings.TrimPrefix(rest, "r:")
	default:
		return fmt.Errorf("CA %q: method %q is neither text nor fixed", ca, method)
	}
	algoName, digest, ok := strings.Cut(rest, ":")
	if !ok {
		return fmt.Errorf("CA %q: the hash is not in the form <algo>:<hash>", ca)
	}
	algo, err := nixhash.ParseAlgorithm(algoName)
	if err != nil {
		return fmt.Errorf("CA %q: %w", ca, err)
	}
	if method == "text" && algo != nixhash.SHA256 {
		return fmt.Errorf("CA %q: a text content address uses sha256, not %s", ca, algoName)
	}
	if strings.ContainsAny(digest, ":-") {
		return fmt.Errorf("CA %q: the hash must be plain base16, nix32 or base64", ca)
	}
	if _, err := nixhash.ParseAny(digest, &algo); err != nil {
		return fmt.Errorf("CA %q: the %s hash does not parse: %w", ca, algoName, err)
	}
	return nil
}
