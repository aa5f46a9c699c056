package caddynix

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/verify"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// withLine replaces the narinfo line `key: …` with `key: value`, or drops
// it when value is "-".
func withLine(narinfo, key, value string) string {
	line := regexp.MustCompile(`(?m)^` + key + `: .*\n`)
	if value == "-" {
		return line.ReplaceAllString(narinfo, "")
	}
	return line.ReplaceAllString(narinfo, key+": "+value+"\n")
}

// TestOneNarinfoRule runs one table of narinfos through upload, serving and
// verify: each accepts exactly what the others accept.
func TestOneNarinfoRule(t *testing.T) {
	p := newTestPath(t, "rule", "the content of a path")
	good := p.narinfo("")
	cases := map[string]struct {
		narinfo string
		ok      bool
	}{
		"as nix writes it":              {good, true},
		"with a deriver":                {good + "Deriver: pk6x23rpy0sipmq8c177y3sn8dhbv9x2-rule.drv\n", true},
		"with a content address":        {good + "CA: fixed:r:sha256:1lgr8gbkw7dzqsx8hh7zmrsbqpjys4vrx5wz2kxz7h3ybwxv7yq4\n", true},
		"with an unknown key":           {good + "X-Unknown: tolerated\n", true},
		"another store directory":       {strings.Replace(good, "/nix/store/", "/gnu/store/", 1), false},
		"another path's hash":           {strings.Replace(good, "StorePath: /nix/store/"+p.hash, "StorePath: /nix/store/"+strings.Repeat("a", 32), 1), false},
		"a deriver that is no path":     {good + "Deriver: ../../etc/passwd\n", false},
		"a reference that is no path":   {withLine(good, "References", "not/a/path"), false},
		"compression not matching":      {withLine(good, "Compression", "xz"), false},
		"compression the cache can't":   {withLine(good, "Compression", "lz4"), false},
		"a URL outside nar/":            {withLine(good, "URL", "../"+p.narURL()), false},
		"no FileHash":                   {withLine(good, "FileHash", "-"), false},
		"a FileHash that is not sha256": {withLine(good, "FileHash", "sha1:a9993e364706816aba3e25717850c26c9cd0d89d"), false},
		"a garbage content address":     {good + "CA: garbage\n", false},
		"no NarSize":                    {withLine(good, "NarSize", "-"), false},
		"a carriage return":             {strings.Replace(good, "\n", "\r\n", 1), false},
		"larger than the limit":         {good + "System: " + strings.Repeat("x", nixfmt.MaxNarInfoSize) + "\n", false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			// Upload, with the NAR in place.
			h, _ := newUploadHandler(t)
			if rec := put(t, h, "/"+p.narURL(), p.nar); rec.Code != http.StatusCreated {
				t.Fatalf("PUT NAR: %d %s", rec.Code, rec.Body)
			}
			rec := put(t, h, "/"+p.hash+".narinfo", []byte(tc.narinfo))
			if uploaded := rec.Code == http.StatusCreated; uploaded != tc.ok || (!tc.ok && rec.Code != http.StatusBadRequest && rec.Code != http.StatusRequestEntityTooLarge) {
				t.Errorf("upload answered %d %s, want accepted=%v", rec.Code, rec.Body, tc.ok)
			}

			// Serving and verify, with the narinfo written into a cache.
			h, _ = newTestHandler(t)
			if err := os.MkdirAll(filepath.Join(h.root, "nar"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.root, p.narURL()), p.nar, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.root, p.hash+".narinfo"), []byte(tc.narinfo), 0o644); err != nil {
				t.Fatal(err)
			}
			if served := request(t, h, http.MethodGet, "/"+p.hash+".narinfo").Code == http.StatusOK; served != tc.ok {
				t.Errorf("served=%v, want %v", served, tc.ok)
			}
			report, err := verifyDir(t, h.root, verify.Options{NarHash: true})
			if err != nil {
				t.Fatal(err)
			}
			if clean := len(report.Problems) == 0; clean != tc.ok {
				t.Errorf("verify clean=%v (%v), want %v", clean, report.Problems, tc.ok)
			}
		})
	}
}
