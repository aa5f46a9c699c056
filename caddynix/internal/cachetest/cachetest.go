// Package cachetest makes what the tests of a nix_cache push and store
// (NARs of one regular file), and measures what they stored.
package cachetest

import (
	"bytes"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/nix-community/go-nix/pkg/nar"
)

// Size is the bytes of NAR files and narinfos of indexed paths, a NAR
// that several paths name counted once, as a collection counts them.
func Size(paths map[string]*index.Path) int64 {
	var size int64
	nars := map[string]bool{}
	for _, p := range paths {
		if !nars[p.NarURL] {
			nars[p.NarURL] = true
			size += p.FileSize
		}
		size += p.NarinfoSize
	}
	return size
}

// NAR is the NAR of a store path that is one regular file holding content.
func NAR(t testing.TB, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
