package retention

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/dir"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// sharedDir plays storage that several nodes share.
type sharedDir struct{ storage.Store }

func (sharedDir) TryLease(context.Context, string, string, time.Duration) (bool, string, error) {
	return true, "", nil
}

func (sharedDir) ReleaseLease(context.Context, string, string) error { return nil }

// TestLargeAnnouncementIsRead: a collection of a large cache announces
// more than a megabyte of names; other nodes read it whole, refuse the
// uploads that need an announced path and admit the others.
func TestLargeAnnouncementIsRead(t *testing.T) {
	ctx := context.Background()
	d, err := dir.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store := sharedDir{d}
	a := announcement{Holder: "another node", Grace: time.Minute, Expires: time.Now().Add(time.Hour)}
	for i := range 100000 {
		hash := make([]byte, 20)
		hash[0], hash[1], hash[2] = byte(i), byte(i>>8), byte(i>>16)
		a.Paths = append(a.Paths, nixbase32.EncodeToString(hash))
	}
	data, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 2<<20 {
		t.Fatalf("the announcement takes only %d bytes", len(data))
	}
	if err := storage.WriteAll(ctx, store, AnnouncementName, data); err != nil {
		t.Fatal(err)
	}
	state := NewState(filepath.Join(t.TempDir(), "index.db"))
	_, _, err = state.AdmitCommit(ctx, store, time.Minute, []string{a.Paths[99999]})
	var announced *AnnouncedError
	if !errors.As(err, &announced) || announced.Key != a.Paths[99999] {
		t.Fatalf("an upload needing the last announced path: %v, want an AnnouncedError", err)
	}
	other := make([]byte, 20)
	other[19] = 1
	_, release, err := state.AdmitCommit(ctx, store, time.Minute, []string{nixbase32.EncodeToString(other)})
	if err != nil {
		t.Fatalf("an upload needing nothing announced: %v", err)
	}
	release()
}
