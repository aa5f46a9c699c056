package index

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A path as FromNarInfo makes it: every field in its compact form.
var usualPath = Path{
	Hash:         "0c6kzph7l0dcbfmjap64f0czdafn3b7x",
	StorePath:    "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello-2.12.1",
	NarURL:       "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz",
	FileSize:     50264,
	NarSize:      226560,
	NarinfoSize:  512,
	References:   []string{"3n58xw4373jp0ljirf06d8077j15pc4j", "9bj1c1ynbdwdcbzb3pdbm7z1nyl0i4s5"},
	Version:      "1x3f-a0-sd8mq8",
	PushedAt:     time.Unix(1700000000, 123456789),
	LastPushedAt: time.Unix(1700003600, 987654321),
	Pusher:       &Pusher{Job: &Job{Repository: "o/r", RunID: "7", PullRequest: true}},
}

func TestRecordsReadBackExactly(t *testing.T) {
	unusual := usualPath
	unusual.StorePath = "/gnu/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello"
	unusual.NarURL = "nar/custom-name.nar.xz?x=1"
	unusual.References = []string{"3n58xw4373jp0ljirf06d8077j15pc4j", "not-a-hash"}
	unusual.Pusher = &Pusher{Token: "token 1"}
	unusual.PullRequestOnly = true
	unusual.LastPushedAt = unusual.PushedAt
	// 'u' is not a nixbase32 digit, and a hash whose first digit is past
	// what 20 bytes hold cannot be spelled back from its bytes.
	uncanonical := usualPath
	uncanonical.NarURL = "nar/zw1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar"
	uncanonical.References = []string{"zn58xw4373jp0ljirf06d8077j15pc4j"}
	bare := Path{Hash: "h", StorePath: "/nix/store/h-x"}

	x, _ := openTest(t)
	for name, p := range map[string]Path{"usual": usualPath, "unusual": unusual, "uncanonical": uncanonical, "bare": bare} {
		t.Run(name, func(t *testing.T) {
			if err := x.update(func(tx *bolt.Tx) error { return putPath(tx, &p) }); err != nil {
				t.Fatal(err)
			}
			got, ok, err := x.Get(p.Hash)
			if err != nil || !ok {
				t.Fatalf("Get: %v, %v", ok, err)
			}
			if !got.PushedAt.Equal(p.PushedAt) || !got.LastPushedAt.Equal(p.LastPushedAt) {
				t.Errorf("push times %v, %v; want %v, %v", got.PushedAt, got.LastPushedAt, p.PushedAt, p.LastPushedAt)
			}
			got.PushedAt, got.LastPushedAt = p.PushedAt, p.LastPushedAt
			if !reflect.DeepEqual(got, p) {
				t.Errorf("read back\n%+v\nwant\n%+v", got, p)
			}
			all, err := x.Paths()
			if err != nil {
				t.Fatal(err)
			}
			if all[p.Hash].StorePath != p.StorePath || !reflect.DeepEqual(all[p.Hash].Pusher, p.Pusher) {
				t.Errorf("Paths gives %+v", all[p.Hash])
			}
		})
	}
}

func TestUsualRecordIsCompact(t *testing.T) {
	p := usualPath
	record := encodePath(&p, make([]byte, pusherKeyLen))
	// Its fields' own bytes (raw hashes, the store path's name, the
	// version) take about 110; the JSON record of schema 1 took 600.
	if len(record) > 150 {
		t.Errorf("the record of a usual path takes %d bytes, want at most 150", len(record))
	}
}

func TestTruncatedRecordIsAnError(t *testing.T) {
	p := usualPath
	record := encodePath(&p, make([]byte, pusherKeyLen))
	for n := range record {
		if _, _, err := decodePath(p.Hash, record[:n]); err == nil {
			t.Fatalf("a record cut to %d of %d bytes reads without error", n, len(record))
		}
	}
	if _, _, err := decodePath(p.Hash, append(record, 0)); err == nil {
		t.Fatal("a record with a byte too many reads without error")
	}
}

func TestSchema1IndexIsConverted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Path{}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(metaBucket)
		if err := meta.Put([]byte("schema"), []byte("1")); err != nil {
			return err
		}
		served, _ := tx.CreateBucket(servedBucket)
		if err := served.Put([]byte(usualPath.Hash), servedValue(time.Unix(1800000000, 0))); err != nil {
			return err
		}
		legacy, _ := tx.CreateBucket(jsonPathsBucket)
		for i := range convertBatch + 3 {
			p := usualPath
			p.Hash = string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
			p.StorePath = "/nix/store/" + p.Hash + "-x"
			if i%2 == 0 {
				p.Pusher = nil
			}
			data, err := json.Marshal(p)
			if err != nil {
				return err
			}
			if err := legacy.Put([]byte(p.Hash), data); err != nil {
				return err
			}
			want[p.Hash] = p
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	x, err := Open(path, time.Second)
	if err != nil {
		t.Fatalf("opening a schema 1 index: %v", err)
	}
	defer func() { _ = x.Close() }()
	got, err := x.Paths()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d paths after the conversion, want %d", len(got), len(want))
	}
	for hash, p := range want {
		g := got[hash]
		if g == nil || g.StorePath != p.StorePath || !g.PushedAt.Equal(p.PushedAt) || !reflect.DeepEqual(g.Pusher, p.Pusher) || !reflect.DeepEqual(g.References, p.References) {
			t.Fatalf("%s after the conversion: %+v, want %+v", hash, g, p)
		}
	}
	served, err := x.Served()
	if err != nil || len(served) != 1 || !served[usualPath.Hash].Equal(time.Unix(1800000000, 0)) {
		t.Fatalf("served times after the conversion: %v, %v", served, err)
	}
	err = x.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(jsonPathsBucket) != nil {
			return errors.New("the JSON records are still there")
		}
		if v := tx.Bucket(metaBucket).Get([]byte("schema")); string(v) != schemaVersion {
			return errors.New("schema " + string(v))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestKeysGiveTheirHashBack(t *testing.T) {
	for _, hash := range []string{usualPath.Hash, "00000000000000000000000000000000", "not-nixbase32-but-32-characters!", "twenty-characters-xx", "h", ""} {
		key := KeyOf(hash)
		if got := HashOf(key); got != hash {
			t.Errorf("HashOf(KeyOf(%q)) = %q", hash, got)
		}
		if len(hash) == hashLen && hash != "not-nixbase32-but-32-characters!" && len(key) != keyLen {
			t.Errorf("the key of %q takes %d bytes, want %d", hash, len(key), keyLen)
		}
	}
}

func TestForgetKeepsWhatWasStoredAgain(t *testing.T) {
	x, _ := openTest(t)
	gone, again := usualPath, usualPath
	gone.Hash, gone.StorePath = "1w1fff338fvdw53sqgamddn1b2xgds47", "/nix/store/1w1fff338fvdw53sqgamddn1b2xgds47-gone"
	for _, p := range []Path{gone, again} {
		if err := x.RecordPush(p, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := x.MarkServed(map[string]time.Time{gone.Hash: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var deleted Deletions
	deleted.Add(&gone)
	deleted.Add(&again)
	// Stored again, as another narinfo, after the collection deleted it.
	again.Version = "another"
	if err := x.RecordPush(again, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := x.Forget(&deleted); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := x.Get(gone.Hash); ok {
		t.Error("a deleted path's record is still there")
	}
	if served, _ := x.Served(); len(served) != 0 {
		t.Errorf("a deleted path's served time is still there: %v", served)
	}
	if _, ok, _ := x.Get(again.Hash); !ok {
		t.Error("the record of a path stored again since its deletion is gone")
	}
}

func TestAnUnchangedRecordIsNotWritten(t *testing.T) {
	x, _ := openTest(t)
	if err := x.putPaths([]Path{usualPath}, nil); err != nil {
		t.Fatal(err)
	}
	// pagesWritten is how many pages putting p writes, beyond what any
	// transaction writes.
	writes := func() int64 {
		stats := x.db.Stats()
		return stats.TxStats.GetWrite()
	}
	pagesWritten := func(p Path) int64 {
		before := writes()
		if err := x.db.Update(func(*bolt.Tx) error { return nil }); err != nil {
			t.Fatal(err)
		}
		empty := writes() - before
		before += empty
		if err := x.putPaths([]Path{p}, nil); err != nil {
			t.Fatal(err)
		}
		return writes() - before - empty
	}
	if n := pagesWritten(usualPath); n != 0 {
		t.Errorf("putting a record as it is stored wrote %d pages; want none", n)
	}
	changed := usualPath
	changed.NarinfoSize++
	if n := pagesWritten(changed); n == 0 {
		t.Error("putting a changed record wrote no page")
	}
	if got, _, _ := x.Get(changed.Hash); got.NarinfoSize != changed.NarinfoSize {
		t.Errorf("the changed record reads back with narinfo size %d, want %d", got.NarinfoSize, changed.NarinfoSize)
	}
}
