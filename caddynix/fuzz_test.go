package caddynix

import (
	"strings"
	"testing"
)

// FuzzParseNarInfo: parsing arbitrary input never panics, and whatever
// parses can be fingerprinted and printed as a narinfo that parses again.
func FuzzParseNarInfo(f *testing.F) {
	f.Add([]byte(sampleNarinfo))
	f.Add([]byte("StorePath: /nix/store/x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := parseNarInfo(data)
		if err != nil {
			return
		}
		_ = fingerprint(info)
		if _, err := parseNarInfo([]byte(info.String())); err != nil {
			t.Fatalf("printed narinfo does not parse: %v\n%s", err, info.String())
		}
	})
}

// FuzzClassify: no accepted path can name anything outside the cache root.
func FuzzClassify(f *testing.F) {
	for _, seed := range []string{"/", "/nix-cache-info", "/nar/../x", "/log/a.drv", "/" + strings.Repeat("a", 32) + ".narinfo"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, p string) {
		req, ok := classify(p)
		if !ok {
			return
		}
		if strings.Contains(req.file, "..") || strings.HasPrefix(req.file, "/") || strings.Contains(req.file, "\\") {
			t.Fatalf("classify(%q) accepted file %q", p, req.file)
		}
	})
}
