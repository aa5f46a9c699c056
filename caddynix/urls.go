package caddynix

import (
	"regexp"
	"strings"
)

// requestKind is one of the URL shapes a binary cache answers.
type requestKind int

const (
	kindCacheInfo requestKind = iota
	kindNarinfo
	kindNar
	kindListing
	kindLog
	kindRealisation
	kindLanding
)

// String names the kind as it appears in metrics and logs.
func (k requestKind) String() string {
	switch k {
	case kindCacheInfo:
		return "nix-cache-info"
	case kindNarinfo:
		return "narinfo"
	case kindNar:
		return "nar"
	case kindListing:
		return "ls"
	case kindLog:
		return "log"
	case kindRealisation:
		return "realisation"
	case kindLanding:
		return "landing"
	}
	return "unknown"
}

// cacheRequest is a request path that matched one of the cache's URL shapes.
type cacheRequest struct {
	kind requestKind
	// file is the path relative to the cache root, with forward slashes.
	file string
	// hash is the store path hash part for narinfo and listing requests.
	hash string
}

// storePathHashLen is the length of a store path's hash part in nix32.
const storePathHashLen = 32

// Store path hash parts and file hashes are nix32: digits and lowercase
// letters without e, o, u and t.
const nix32Chars = "0-9a-df-np-sv-z"

var (
	narPattern = regexp.MustCompile(`^nar/[` + nix32Chars + `]{52}\.nar(\.(xz|zst|bz2|br|lz4|lzip|gz))?$`)
	// A derivation's base name: its hash part, a dash and a store path name
	// (letters, digits and +-._?=), ending in .drv.
	logPattern = regexp.MustCompile(`^log/[` + nix32Chars + `]{32}-[A-Za-z0-9+\-._?=]+\.drv$`)
	// A realisation id: the derivation's hash modulo (sha256:<base16>), "!"
	// and the output name.
	realisationPattern = regexp.MustCompile(`^realisations/sha256:[0-9a-f]{64}![A-Za-z0-9+\-._?=]+\.doi$`)
)

// nix32Alphabet marks the bytes of nix32, nix32Chars above.
var nix32Alphabet = func() (table [256]bool) {
	for _, c := range "0123456789abcdfghijklmnpqrsvwxyz" {
		table[c] = true
	}
	return table
}()

// isNix32Hash reports whether s is a store path hash part: 32 nix32 bytes.
func isNix32Hash(s string) bool {
	if len(s) != storePathHashLen {
		return false
	}
	for i := range len(s) {
		if !nix32Alphabet[s[i]] {
			return false
		}
	}
	return true
}

// classify maps a request path to a cache URL shape. Anything that is not
// exactly one of the shapes (including any path with "..", empty segments,
// backslashes or percent-decoded slashes) does not match, so nothing outside
// the cache's layout can be named.
func classify(urlPath string) (cacheRequest, bool) {
	if urlPath == "/" || urlPath == "" {
		return cacheRequest{kind: kindLanding}, true
	}
	p, ok := strings.CutPrefix(urlPath, "/")
	if !ok || strings.Contains(p, "..") || strings.Contains(p, "//") || strings.ContainsAny(p, "\\\x00") {
		return cacheRequest{}, false
	}
	if p == "nix-cache-info" {
		return cacheRequest{kind: kindCacheInfo, file: p}, true
	}
	// narinfo is what clients ask for most: matched without a regexp.
	if hash, ok := strings.CutSuffix(p, ".narinfo"); ok && isNix32Hash(hash) {
		return cacheRequest{kind: kindNarinfo, file: p, hash: hash}, true
	}
	if hash, ok := strings.CutSuffix(p, ".ls"); ok && isNix32Hash(hash) {
		return cacheRequest{kind: kindListing, file: p, hash: hash}, true
	}
	switch {
	case narPattern.MatchString(p):
		return cacheRequest{kind: kindNar, file: p}, true
	case logPattern.MatchString(p):
		return cacheRequest{kind: kindLog, file: p}, true
	case realisationPattern.MatchString(p):
		return cacheRequest{kind: kindRealisation, file: p}, true
	}
	return cacheRequest{}, false
}
