package storage_test

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
)

// TestLayeredReadsThroughAndWritesOnTop: an overlay in a sub-directory
// layered over its store reads what either holds, its own first, and
// writes, lists and deletes only its own.
func TestLayeredReadsThroughAndWritesOnTop(t *testing.T) {
	ctx := context.Background()
	base, err := dir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = base.Close() }()
	top := storage.Sub(base, "overlays/x")
	view := storage.Layered(top, base)
	for name, body := range map[string]string{"a.narinfo": "below", "b.narinfo": "below"} {
		if err := storage.WriteAll(ctx, base, name, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := storage.WriteAll(ctx, view, "b.narinfo", []byte("top")); err != nil {
		t.Fatal(err)
	}
	if err := storage.WriteAll(ctx, view, "c.narinfo", []byte("top")); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a.narinfo": "below", "b.narinfo": "top", "c.narinfo": "top"} {
		got, err := storage.ReadAll(ctx, view, name, 100)
		if err != nil || string(got) != want {
			t.Errorf("%s through the layers: %q, %v; want %q", name, got, err, want)
		}
	}
	if got, err := storage.ReadAll(ctx, base, "b.narinfo", 100); err != nil || string(got) != "below" {
		t.Errorf("writing through the layers changed the store below: %q, %v", got, err)
	}
	if _, err := base.Stat(ctx, "c.narinfo"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("what was written on top is in the store below: %v", err)
	}
	infos, err := view.List(ctx, "")
	if err != nil || len(infos) != 2 || infos[0].Name != "b.narinfo" || infos[1].Name != "c.narinfo" {
		t.Errorf("the layers list %v, %v; want the top's b and c", infos, err)
	}
	if info, err := view.Stat(ctx, "c.narinfo"); err != nil || info.Name != "c.narinfo" {
		t.Errorf("stat on top: %+v, %v", info, err)
	}
	if err := view.Delete(ctx, "a.narinfo"); err != nil {
		t.Fatal(err)
	}
	if _, err := base.Stat(ctx, "a.narinfo"); err != nil {
		t.Errorf("deleting through the layers deleted below: %v", err)
	}
	if _, err := view.Stat(ctx, "d.narinfo"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a name neither holds: %v", err)
	}
}
