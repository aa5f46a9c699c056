package caddynix

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"go.uber.org/zap"
)

// TestUploadsDoNotWaitForAHeldIndex: while another holder has the index
// file, the cache opens it in the background; an upload meanwhile is
// answered at once, and its push is written into the index as soon as
// the index is free.
func TestUploadsDoNotWaitForAHeldIndex(t *testing.T) {
	h, _ := newUploadHandler(t)
	indexPath := filepath.Join(t.TempDir(), "held.index")
	held, err := index.Open(indexPath, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h.state = retention.NewState(indexPath)
	h.state.SetStore(h.store, false)
	rewire(t, h)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opened := make(chan error, 1)
	go func() {
		_, err := h.state.Open(ctx, zap.NewNop())
		opened <- err
	}()
	time.Sleep(100 * time.Millisecond) // the opener is waiting on the holder now

	p := newTestPath(t, "pushed", strings.Repeat("p", 1000))
	answered := make(chan int, 1)
	go func() { answered <- p.upload(t, h, "").Code }()
	select {
	case code := <-answered:
		if code != http.StatusCreated {
			t.Fatalf("upload while the index is held: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an upload waited for the index that another holder has")
	}
	if h.state.Index() != nil {
		t.Fatal("the index claims to be open while another holder has it")
	}
	// An admin operation waits for the index, as long as its context lets
	// it.
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if idx, err := h.state.WaitIndex(short); idx != nil || err == nil {
		t.Fatalf("WaitIndex while the index is held: %v, %v; want the context's error", idx, err)
	}
	waited := make(chan *index.Index, 1)
	go func() {
		idx, _ := h.state.WaitIndex(ctx)
		waited <- idx
	}()

	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-opened; err != nil {
		t.Fatalf("opening the index once free: %v", err)
	}
	select {
	case idx := <-waited:
		if idx == nil || idx != h.state.Index() {
			t.Fatalf("WaitIndex returned %v, not the index opened", idx)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitIndex did not return once the index was open")
	}
	record, ok, err := h.state.Index().Get(p.hash)
	if err != nil || !ok {
		t.Fatalf("the push made while the index was held is not in it: %v %v", ok, err)
	}
	if record.Pusher == nil || record.Pusher.Token != "token 1" {
		t.Errorf("the push was recorded with pusher %+v, want token 1", record.Pusher)
	}
	_ = h.state.Destruct()
}
