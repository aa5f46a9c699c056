package cacheurl

import (
	"strings"
	"testing"
)

// FuzzClassify: no accepted path can name anything outside the cache root.
func FuzzClassify(f *testing.F) {
	for _, seed := range []string{"/", "/nix-cache-info", "/nar/../x", "/log/a.drv", "/" + strings.Repeat("a", 32) + ".narinfo"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, p string) {
		req, ok := Classify(p)
		if !ok {
			return
		}
		if strings.Contains(req.File, "..") || strings.HasPrefix(req.File, "/") || strings.Contains(req.File, "\\") {
			t.Fatalf("Classify(%q) accepted file %q", p, req.File)
		}
	})
}
