package retention

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
)

// TestCatalogReadsTheIndexAsItsRecordsSay: the catalog a collection plans
// with, read in place from the index, says what the index's records and
// served times say, for narinfos as nix copy writes them and for a push
// whose NAR is named otherwise and which references a path the cache
// does not hold.
func TestCatalogReadsTheIndexAsItsRecordsSay(t *testing.T) {
	ctx := context.Background()
	c, store := newTestCollector(t)
	base := writePath(t, store, "base", 10)
	lib := writePath(t, store, "lib", 20, base)
	app := writePath(t, store, "app", 30, lib, base)
	if _, err := c.Reindex(ctx, false); err != nil {
		t.Fatal(err)
	}
	pr := index.Path{
		Hash: "0000000000000000000000000000000p", StorePath: "/nix/store/0000000000000000000000000000000p-pr",
		NarURL: "nar/pr.nar?hash=x", FileSize: 5, NarinfoSize: 9,
		References: []string{lib.hash, "1111111111111111111111111111111z"},
	}
	pusher := &index.Pusher{Job: &index.Job{Repository: "o/r", RunID: "1", PullRequest: true}}
	if err := c.Index().RecordPush(pr, pusher, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := c.Index().MarkServed(map[string]time.Time{lib.hash: time.Unix(1800000000, 0)}); err != nil {
		t.Fatal(err)
	}

	got, err := loadCatalog(c.Index())
	if err != nil {
		t.Fatal(err)
	}
	paths, err := c.Index().Paths()
	if err != nil {
		t.Fatal(err)
	}
	served, err := c.Index().Served()
	if err != nil {
		t.Fatal(err)
	}
	if want := catalogOf(paths, served); !reflect.DeepEqual(got, want) {
		t.Fatalf("catalog read from the index\n%+v\nwant, from its records\n%+v", got, want)
	}

	referenced := func(hash string) []string {
		id, ok := got.findHash(hash)
		if !ok {
			t.Fatalf("%s is not in the catalog", hash)
		}
		var hashes []string
		for _, ref := range got.references(id) {
			hashes = append(hashes, got.hash(ref))
		}
		slices.Sort(hashes)
		return hashes
	}
	if want := []string{base.hash, lib.hash}; !slices.Equal(referenced(app.hash), slices.Sorted(slices.Values(want))) {
		t.Errorf("app references %v, want %v", referenced(app.hash), want)
	}
	if got := referenced(pr.Hash); !slices.Equal(got, []string{lib.hash}) {
		t.Errorf("the push references %v, want only the path the cache holds, %s", got, lib.hash)
	}
	if id, _ := got.findHash(pr.Hash); !got.pullRequestOnly[id] || got.narSize[got.nar[id]] != 5 {
		t.Errorf("the push is pull-request only %v, NAR size %d", got.pullRequestOnly[id], got.narSize[got.nar[id]])
	}
	if id, _ := got.findHash(lib.hash); got.served[id] != time.Unix(1800000000, 0).UnixNano() {
		t.Errorf("lib last served %d", got.served[id])
	}
}

func TestCollectionReportsListTheFirstDeletions(t *testing.T) {
	var collection, deletion Report
	deletion.listAll = true
	for i := range listedDeletions + 5 {
		collection.noteDeleted(fmt.Sprint(i))
		deletion.noteDeleted(fmt.Sprint(i))
	}
	if collection.DeletedPaths != listedDeletions+5 || len(collection.Deleted) != listedDeletions || collection.Deleted[0] != "0" {
		t.Errorf("a collection's report counts %d and lists %d, from %q", collection.DeletedPaths, len(collection.Deleted), collection.Deleted[0])
	}
	if deletion.DeletedPaths != listedDeletions+5 || len(deletion.Deleted) != listedDeletions+5 {
		t.Errorf("a deletion's report counts %d and lists %d; want all", deletion.DeletedPaths, len(deletion.Deleted))
	}
}
