// Package cacheurl is the URL layout of a Nix binary cache: which request
// paths name which kind of file (nix-cache-info, narinfo, NAR, listing,
// log, realisation), and what a file of each kind is served as. Anything
// else names nothing, so no request reaches outside the layout.
//
// It knows request paths only, not how or where files are stored.
package cacheurl

import (
	"mime"
	"regexp"
	"strings"
)

// Kind is one of the URL shapes a binary cache answers.
type Kind int

const (
	CacheInfo Kind = iota
	NarInfo
	Nar
	Listing
	Log
	Realisation
	Landing
)

// String names the kind as it appears in metrics and logs.
func (k Kind) String() string {
	switch k {
	case CacheInfo:
		return "nix-cache-info"
	case NarInfo:
		return "narinfo"
	case Nar:
		return "nar"
	case Listing:
		return "ls"
	case Log:
		return "log"
	case Realisation:
		return "realisation"
	case Landing:
		return "landing"
	}
	return "unknown"
}

// Request is a request path that matched one of the cache's URL shapes.
type Request struct {
	Kind Kind
	// File is the path relative to the cache root, with forward slashes.
	File string
	// Hash is the store path hash part for narinfo and listing requests.
	Hash string
}

// HashLen is the length of a store path's hash part in nix32.
const HashLen = 32

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

// IsNix32Hash reports whether s is a store path hash part: 32 nix32 bytes.
func IsNix32Hash(s string) bool {
	if len(s) != HashLen {
		return false
	}
	for i := range len(s) {
		if !nix32Alphabet[s[i]] {
			return false
		}
	}
	return true
}

// Classify maps a request path to a cache URL shape. Anything that is not
// exactly one of the shapes (including any path with "..", empty segments,
// backslashes or percent-decoded slashes) does not match, so nothing outside
// the cache's layout can be named.
func Classify(urlPath string) (Request, bool) {
	if urlPath == "/" || urlPath == "" {
		return Request{Kind: Landing}, true
	}
	p, ok := strings.CutPrefix(urlPath, "/")
	if !ok || strings.Contains(p, "..") || strings.Contains(p, "//") || strings.ContainsAny(p, "\\\x00") {
		return Request{}, false
	}
	if p == "nix-cache-info" {
		return Request{Kind: CacheInfo, File: p}, true
	}
	// narinfo is what clients ask for most: matched without a regexp.
	if hash, ok := strings.CutSuffix(p, ".narinfo"); ok && IsNix32Hash(hash) {
		return Request{Kind: NarInfo, File: p, Hash: hash}, true
	}
	if hash, ok := strings.CutSuffix(p, ".ls"); ok && IsNix32Hash(hash) {
		return Request{Kind: Listing, File: p, Hash: hash}, true
	}
	switch {
	case narPattern.MatchString(p):
		return Request{Kind: Nar, File: p}, true
	case logPattern.MatchString(p):
		return Request{Kind: Log, File: p}, true
	case realisationPattern.MatchString(p):
		return Request{Kind: Realisation, File: p}, true
	}
	return Request{}, false
}

// contentTypes maps the cache's file kinds to what Nix itself sends for them.
var contentTypes = map[Kind]string{
	NarInfo:     "text/x-nix-narinfo",
	Nar:         "application/x-nix-nar",
	Listing:     "application/json",
	Log:         "text/plain; charset=utf-8",
	Realisation: "application/json",
}

// ContentType is what a file of kind k is served as.
func ContentType(k Kind) string { return contentTypes[k] }

// Immutable is the Cache-Control of a NAR: its URL names its content, so
// it never changes.
const Immutable = "public, max-age=31536000, immutable"

// NarContentType is the content type of a compressed NAR, by file extension.
func NarContentType(ext string) string {
	switch ext {
	case ".xz":
		return "application/x-xz"
	case ".zst":
		return "application/zstd"
	case ".bz2":
		return "application/x-bzip2"
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return "application/octet-stream"
}
