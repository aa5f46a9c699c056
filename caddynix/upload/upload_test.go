package upload

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cachetest"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"go.uber.org/zap"
)

func newTestReceiver(t *testing.T, opts Options) (*Receiver, storage.Store) {
	t.Helper()
	store, err := dir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	state := retention.NewState(filepath.Join(t.TempDir(), "index.db"))
	state.SetStore(store, false)
	if _, err := state.Open(context.Background(), zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = state.Destruct(); _ = store.Close() })
	opts.Store, opts.StoreDir, opts.State, opts.Logger = store, "/nix/store", state, zap.NewNop()
	return New(opts), store
}

// pushed is a path as a client pushes it: its NAR and narinfo.
type pushed struct {
	hash, narURL, narinfo string
	nar                   []byte
}

func newPushed(t *testing.T, content string) pushed {
	t.Helper()
	random := make([]byte, 20)
	_, _ = rand.Read(random)
	narBytes := cachetest.NAR(t, content)
	sum := sha256.Sum256(narBytes)
	p := pushed{hash: nixbase32.EncodeToString(random), nar: narBytes, narURL: "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"}
	p.narinfo = fmt.Sprintf("StorePath: /nix/store/%s-p\nURL: %s\nCompression: none\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%[3]s\nNarSize: %[4]d\nReferences: \n",
		p.hash, p.narURL, nixbase32.EncodeToString(sum[:]), len(p.nar))
	return p
}

func put(u *Receiver, file string, body []byte) error {
	req, ok := cacheurl.Classify("/" + file)
	if !ok {
		return fmt.Errorf("%s is no cache file", file)
	}
	return u.Put(context.Background(), req, Body{Reader: bytes.NewReader(body), Length: int64(len(body))}, &index.Pusher{Token: "test"})
}

// refusal is the status and reason of a refused upload, or 0 and "".
func refusal(err error) (int, string) {
	var e *Error
	if errors.As(err, &e) {
		return e.Status, e.Reason
	}
	return 0, ""
}

// TestReceiverChecksAndCommits pushes a path as nix copy does and then the
// ways a push goes wrong: each refusal has its status and reason, and
// leaves the stored path as it was.
func TestReceiverChecksAndCommits(t *testing.T) {
	u, store := newTestReceiver(t, Options{MaxLogSize: 1024})
	ctx := context.Background()
	p := newPushed(t, "the content")
	if status, reason := refusal(put(u, p.hash+".narinfo", []byte(p.narinfo))); status != 400 || reason != "missing_nar" {
		t.Fatalf("a narinfo before its NAR: %d %s, want 400 missing_nar", status, reason)
	}
	other := newPushed(t, "other content")
	if status, reason := refusal(put(u, p.narURL, other.nar)); status != 400 || reason != "file_hash_mismatch" {
		t.Fatalf("a NAR under another's name: %d %s, want 400 file_hash_mismatch", status, reason)
	}
	if err := put(u, p.narURL, p.nar); err != nil {
		t.Fatal(err)
	}
	wrongHash := strings.Replace(p.narinfo, "NarSize: ", "NarSize: 1", 1)
	if status, reason := refusal(put(u, p.hash+".narinfo", []byte(wrongHash))); status != 400 || reason != "nar_size_mismatch" {
		t.Fatalf("a narinfo with a wrong NarSize: %d %s, want 400 nar_size_mismatch", status, reason)
	}
	if err := put(u, p.hash+".narinfo", []byte(p.narinfo)); err != nil {
		t.Fatal(err)
	}
	if err := put(u, p.hash+".narinfo", []byte(p.narinfo)); err != nil {
		t.Fatalf("the same path again: %v", err)
	}
	// Another NAR under the same store path never replaces it.
	if err := put(u, other.narURL, other.nar); err != nil {
		t.Fatal(err)
	}
	swapped := strings.Replace(other.narinfo, other.hash, p.hash, 1)
	if status, reason := refusal(put(u, p.hash+".narinfo", []byte(swapped))); status != 409 || reason != "path_exists" {
		t.Fatalf("another NAR for a stored path: %d %s, want 409 path_exists", status, reason)
	}
	stored, err := u.StoredNarInfo(ctx, p.hash)
	if err != nil || stored == nil || stored.URL != p.narURL {
		t.Fatalf("the stored path is not the first push: %+v %v", stored, err)
	}
	record, ok, err := u.state.Index().Get(p.hash)
	if err != nil || !ok || record.Pusher == nil || record.Pusher.Token != "test" {
		t.Fatalf("the index lacks the push: %+v %v %v", record, ok, err)
	}
	// A log over max_log_size leaves nothing behind.
	if status, reason := refusal(put(u, "log/"+p.hash+"-p.drv", bytes.Repeat([]byte("x"), 2048))); status != 413 || reason != "too_large" {
		t.Fatalf("a log over max_log_size: %d %s, want 413 too_large", status, reason)
	}
	if _, err := store.Stat(ctx, "log/"+p.hash+"-p.drv"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused log was stored: %v", err)
	}
	if status, _ := refusal(put(u, "", nil)); status != 405 {
		t.Fatalf("an upload of the landing page: %d, want 405", status)
	}
}

// refusingOnce is a store whose first conditional write of each narinfo
// is refused with nothing stored, as an S3 server does when another
// writer's commit of the same object is under way but not yet visible.
type refusingOnce struct {
	storage.Store
	refused map[string]bool
}

func (s *refusingOnce) Create(ctx context.Context, name string) (storage.Upload, error) {
	up, err := s.Store.Create(ctx, name)
	if err != nil || !strings.HasSuffix(name, ".narinfo") || s.refused[name] {
		return up, err
	}
	s.refused[name] = true
	return refusedUpload{up}, nil
}

type refusedUpload struct{ storage.Upload }

func (u refusedUpload) CommitNew() (bool, error) {
	u.Abort()
	return false, nil
}

// TestNarInfoRefusedAsThereButAbsentIsStored: a conditional write refused
// while nothing can be read yet is tried again, not failed as vanished.
func TestNarInfoRefusedAsThereButAbsentIsStored(t *testing.T) {
	u, store := newTestReceiver(t, Options{})
	u.store = &refusingOnce{Store: store, refused: map[string]bool{}}
	p := newPushed(t, "raced content")
	if err := put(u, p.narURL, p.nar); err != nil {
		t.Fatal(err)
	}
	if err := put(u, p.hash+".narinfo", []byte(p.narinfo)); err != nil {
		t.Fatalf("a narinfo whose first conditional write was refused: %v", err)
	}
	stored, err := u.StoredNarInfo(context.Background(), p.hash)
	if err != nil || stored == nil || stored.URL != p.narURL {
		t.Fatalf("the narinfo is not stored: %+v %v", stored, err)
	}
}
