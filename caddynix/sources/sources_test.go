package sources

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/nixstore/nixstoretest"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
)

func testKey(t *testing.T, name string) (signature.SecretKey, signature.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	public, err := nixfmt.GenerateKeyPair(name, filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	secret, err := nixfmt.LoadSecretKey(filepath.Join(dir, "k.sec"))
	if err != nil {
		t.Fatal(err)
	}
	return secret, public
}

// get serves target from the sources as a client asks for it.
func get(t *testing.T, s *Sources, target string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	u, _ := http.NewRequest(http.MethodGet, target, nil)
	req, ok := cacheurl.Classify(u.URL.Path)
	if !ok {
		t.Fatalf("%s is no cache URL", target)
	}
	rec := httptest.NewRecorder()
	return rec, s.ServeFile(rec, httptest.NewRequest(http.MethodGet, target, nil), req)
}

// TestLiveStoreThenUpstreamThenKept asks sources made without any handler
// for the paths of a live store, which serves them signed by the cache's
// key, and of an upstream (a second Sources serving that live store over
// HTTP), whose signature must be trusted and whose paths are kept in the
// cache's storage and then stored as `nix copy` names them.
func TestLiveStoreThenUpstreamThenKept(t *testing.T) {
	store := nixstoretest.New(t, nixstoretest.Path{Name: "lib"}, nixstoretest.Path{Name: "app", References: []int{0}})
	upSecret, upPublic := testKey(t, "up-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live, err := New(ctx, Options{StoreDir: "/nix/store", Keys: []signature.SecretKey{upSecret}, Logger: zap.NewNop(),
		Live: &LiveOptions{Dir: store.Dir, Database: store.Database}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = live.Close() }()
	app := store.Paths[1]
	hash := filepath.Base(app)[:cacheurl.HashLen]
	body, _, err := live.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	info, err := nixfmt.ParseNarInfo(body)
	if err != nil || !upPublic.Verify(nixfmt.Fingerprint(info), info.Signatures[len(info.Signatures)-1]) {
		t.Fatalf("the live narinfo is not signed by the cache's key: %v\n%s", err, body)
	}
	if _, _, err := live.NarInfo(ctx, strings.Repeat("1", 32)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a path the store lacks: %v, want ErrNotFound", err)
	}

	// The live store behind HTTP is the upstream of a cache that keeps.
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, ok := cacheurl.Classify(r.URL.Path)
		switch {
		case ok && req.Kind == cacheurl.NarInfo:
			body, _, err := live.NarInfo(r.Context(), req.Hash)
			if err != nil {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write(body)
		case ok:
			if err := live.ServeFile(w, r, req); err != nil {
				http.NotFound(w, r)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer upstream.Close()
	root := t.TempDir()
	cache, err := dir.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cache.Close() }()
	state := retention.NewState(filepath.Join(t.TempDir(), "index.db"))
	defer func() { _ = state.Destruct() }()
	downSecret, _ := testKey(t, "down-1")
	keeper := upload.New(upload.Options{Store: cache, StoreDir: "/nix/store", Keys: []signature.SecretKey{downSecret}, State: state, Logger: zap.NewNop()})
	front, err := New(ctx, Options{Store: cache, StoreDir: "/nix/store", Keys: []signature.SecretKey{downSecret}, Logger: zap.NewNop(), Keeper: keeper,
		Upstreams: []UpstreamOptions{{URL: upstream.URL, TrustedPublicKeys: []string{upPublic.String()}, Keep: true}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = front.Close() }()
	if names := front.Names(); len(names) != 1 || !strings.Contains(names[0], upstream.URL) {
		t.Errorf("Names: %v", names)
	}
	if keys := front.PassedOnKeys(); len(keys) != 1 || keys[0] != upPublic.String() {
		t.Errorf("PassedOnKeys: %v, want the upstream's key, since its narinfo is passed on unsigned by the cache", keys)
	}
	body, _, err = front.NarInfo(ctx, hash)
	if err != nil {
		t.Fatal(err)
	}
	through, _ := nixfmt.ParseNarInfo(body)
	rec, err := get(t, front, upstream.URL+"/"+through.URL)
	if err != nil {
		t.Fatal(err)
	}
	var nar bytes.Buffer
	if _, err := io.Copy(&nar, rec.Body); err != nil || uint64(nar.Len()) != through.NarSize {
		t.Fatalf("the NAR through the front: %d bytes, want %d (%v)", nar.Len(), through.NarSize, err)
	}
	front.Wait()
	for _, p := range store.Paths {
		kept, err := keeper.StoredNarInfo(ctx, filepath.Base(p)[:cacheurl.HashLen])
		if err != nil || kept == nil {
			t.Fatalf("%s was not kept: %v", p, err)
		}
		if strings.Contains(kept.URL, "?") {
			t.Errorf("%s was kept under the upstream's URL %s", p, kept.URL)
		}
	}
}
