// Package cachetest makes what the tests of a nix_cache push and store:
// NARs of one regular file.
package cachetest

import (
	"bytes"
	"testing"

	"github.com/nix-community/go-nix/pkg/nar"
)

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
