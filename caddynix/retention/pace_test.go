package retention

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

func TestPacerShares(t *testing.T) {
	for _, share := range []float64{0, 1, -1, 2} {
		if p := newPacer(share); p != nil {
			t.Errorf("a share of %v paces (%+v); want no pacing", share, p)
		}
	}
	if p := newPacer(0.25); p == nil || p.rest != 3 {
		t.Errorf("a quarter of a CPU rests %+v; want 3 seconds for each second of work", p)
	}
	var none *pacer
	none.start()
	none.pause(context.Background()) // no pacing: returns at once
}

// listing is a store whose List gives names.
type listing struct {
	storage.Store
	names []string
}

func (l listing) List(context.Context, string) ([]storage.Info, error) {
	var infos []storage.Info
	for _, name := range l.names {
		infos = append(infos, storage.Info{Name: name})
	}
	return infos, nil
}

func TestPacedWalkSeesEveryObjectAndStops(t *testing.T) {
	var names []string
	for i := range 3*walkStep + 1 {
		names = append(names, fmt.Sprint(i))
	}
	store := pacedWalks{Store: listing{names: names}, pace: newPacer(0.99)}
	var seen []string
	if err := storage.Walk(context.Background(), store, "", func(info storage.Info) error {
		seen = append(seen, info.Name)
		return nil
	}); err != nil || len(seen) != len(names) || seen[len(seen)-1] != names[len(names)-1] {
		t.Fatalf("a paced walk saw %d of %d objects, %v", len(seen), len(names), err)
	}
	stop := errors.New("enough")
	if err := storage.Walk(context.Background(), store, "", func(storage.Info) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("a paced walk whose function fails: %v", err)
	}
}
