package overlay

import (
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

func TestIDsAreDistinctAndSafe(t *testing.T) {
	keys := []Key{
		{"pkgs/main", "refs/heads/feature"},
		{"pkgs/main", "refs/heads/feature/"},
		{"pkgs/mai", "nrefs/heads/feature"},
		{"pkgs/other", "refs/heads/feature"},
		{"", "token 1"},
		{"../..", "../../etc"},
	}
	seen := map[string]Key{}
	for _, k := range keys {
		id := k.ID()
		if !IsID(id) {
			t.Errorf("%s: id %q is not an id", k, id)
		}
		if other, dup := seen[id]; dup {
			t.Errorf("%s and %s share the id %s", k, other, id)
		}
		seen[id] = k
	}
	if a, b := (Key{"pkgs/main", "refs/heads/x"}), (Key{"pkgs/main", "refs/heads/x"}); a.ID() != b.ID() {
		t.Error("one key gives two ids")
	}
	for _, bad := range []string{"", "../overlays", "0123456789abcdfghijklmnpqrsvwxy/", "0123456789abcdfghijklmnpqrsvwxyze"} {
		if IsID(bad) {
			t.Errorf("IsID(%q)", bad)
		}
	}
}

func TestSigningKeyIsDerivedAndDistinct(t *testing.T) {
	cacheKey, cachePublic, err := signature.GenerateKeypair("cache.example.org-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := SigningKey(cacheKey)
	if err != nil {
		t.Fatal(err)
	}
	again, err := SigningKey(cacheKey)
	if err != nil {
		t.Fatal(err)
	}
	if key.String() != again.String() {
		t.Fatal("the overlay key differs between derivations: nodes of one cache would sign differently")
	}
	public := key.ToPublicKey()
	if public.Name != "cache.example.org-1-overlay" {
		t.Errorf("overlay key name %q", public.Name)
	}
	if public.String() == cachePublic.String() {
		t.Fatal("the overlay key is the cache's key")
	}
	sig, err := key.Sign(nil, "1;/nix/store/x;sha256:y;1;")
	if err != nil {
		t.Fatal(err)
	}
	if !public.Verify("1;/nix/store/x;sha256:y;1;", sig) {
		t.Error("a signature of the overlay key does not verify with its public key")
	}
	if cachePublic.Verify("1;/nix/store/x;sha256:y;1;", signature.Signature{Name: cachePublic.Name, Data: sig.Data}) {
		t.Error("an overlay signature verifies with the cache's key")
	}
	other, _, err := signature.GenerateKeypair("cache.example.org-1", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if derived, _ := SigningKey(other); derived.String() == key.String() {
		t.Error("two cache keys give the same overlay key")
	}
}

func TestOverlaysAreRecordedListedAndDropped(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	store, err := dir.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	feature := Key{"pkgs/main", "refs/heads/feature"}
	other := Key{"pkgs/main", "refs/pull/7/head"}
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, k := range []Key{feature, other} {
		if err := Touch(ctx, store, k, first); err != nil {
			t.Fatal(err)
		}
	}
	if err := Touch(ctx, store, feature, first.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := Touch(ctx, store, Key{Repository: "pkgs/main"}, first); !errors.Is(err, ErrBadKey) {
		t.Fatalf("an overlay without a ref: %v", err)
	}
	view := Store(store, feature.ID())
	for name, body := range map[string]string{"abc.narinfo": "narinfo", "nar/abc.nar": "nar", "log/abc.drv": "log"} {
		if err := storage.WriteAll(ctx, view, name, []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "overlays", feature.ID(), "nar", "abc.nar")); err != nil {
		t.Fatalf("the overlay's NAR is not under overlays/<id>/nar: %v", err)
	}
	if _, err := store.Stat(ctx, "abc.narinfo"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the overlay's narinfo is visible in the cache proper: %v", err)
	}
	infos, err := view.List(ctx, "nar")
	if err != nil || len(infos) != 1 || infos[0].Name != "nar/abc.nar" {
		t.Fatalf("the overlay lists %v, %v", infos, err)
	}

	records, err := List(ctx, store)
	if err != nil || len(records) != 2 {
		t.Fatalf("listed %v, %v", records, err)
	}
	for _, rec := range records {
		switch rec.Key {
		case feature:
			if !rec.Created.Equal(first) || !rec.LastPush.Equal(first.Add(time.Hour)) || rec.ID != feature.ID() {
				t.Errorf("feature's record: %+v", rec)
			}
		case other:
			if !rec.LastPush.Equal(first) {
				t.Errorf("other's record: %+v", rec)
			}
		default:
			t.Errorf("unknown record %+v", rec)
		}
	}

	files, bytes, err := Drop(ctx, store, feature.ID())
	if err != nil || files != 3 || bytes != int64(len("narinfo")+len("nar")+len("log")) {
		t.Fatalf("dropped %d files, %d bytes: %v", files, bytes, err)
	}
	if records, err := List(ctx, store); err != nil || len(records) != 1 || records[0].Key != other {
		t.Fatalf("after the drop, listed %v, %v", records, err)
	}
	if _, _, err := Drop(ctx, store, "../../etc"); err == nil {
		t.Fatal("dropped a path that is no overlay id")
	}
}
