package index

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestConcurrentPushesAreAllRecorded(t *testing.T) {
	x, _ := openTest(t)
	const writers = 200
	job := &Job{Repository: "o/r", RunID: "1"}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			hash := fmt.Sprintf("h%03d", i)
			errs <- x.RecordPush(Path{Hash: hash, StorePath: "/nix/store/" + hash + "-x"}, &Pusher{Job: job}, time.Unix(1000, 0))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	paths, err := x.Paths()
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != writers {
		t.Fatalf("%d paths recorded, want %d", len(paths), writers)
	}
	run, err := x.Run(job)
	if err != nil {
		t.Fatal(err)
	}
	if run == nil || len(run.Paths) != writers {
		t.Fatalf("the run lists %v, want all %d paths", run, writers)
	}
}

func TestAFailingWriteFailsAlone(t *testing.T) {
	x, _ := openTest(t)
	refused := errors.New("refused")
	const writers = 50
	var wg sync.WaitGroup
	results := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			results[i] = x.update(func(tx *bolt.Tx) error {
				switch i {
				case 7:
					return refused
				case 9:
					panic("a bug in a write")
				}
				return tx.Bucket(metaBucket).Put(fmt.Appendf(nil, "k%d", i), []byte("v"))
			})
		})
	}
	wg.Wait()
	for i, err := range results {
		switch {
		case i == 7 && !errors.Is(err, refused):
			t.Errorf("write 7: %v, want its own error", err)
		case i == 9 && err == nil:
			t.Error("a panicking write succeeded")
		case i != 7 && i != 9 && err != nil:
			t.Errorf("write %d failed with its neighbour: %v", i, err)
		}
	}
	err := x.db.View(func(tx *bolt.Tx) error {
		for i := range writers {
			stored := tx.Bucket(metaBucket).Get(fmt.Appendf(nil, "k%d", i)) != nil
			if want := i != 7 && i != 9; stored != want {
				t.Errorf("write %d stored: %v, want %v", i, stored, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.update(func(tx *bolt.Tx) error { return nil }); err != nil {
		t.Fatalf("a write after the failures: %v", err)
	}
}
