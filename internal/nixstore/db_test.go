package nixstore_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/cargoxx-pkgs/runner/internal/nixstore/nixstoretest"
	"github.com/nix-community/go-nix/pkg/sqlite/nix_v10"
)

const (
	leafPath   = "/nix/store/0l6v2hr5yhxqjxg8kz9ahl6fs8mcfcgm-leaf"
	topPath    = "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-top"
	brokenPath = "/nix/store/2zzr1b0hyvq5arqsc5v4xjsx3qv5d7r5-broken"
	// top's NAR hash, recorded in nix32 (leaf's is base16, as Nix
	// records it).
	topHashNix32 = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
)

// nixDB writes a database as Nix would, and returns its file.
func nixDB(t *testing.T) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "db.sqlite")
	db, err := sql.Open("sqlite", "file:"+file)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, nixstoretest.Schema); err != nil {
		t.Fatal(err)
	}
	q := nix_v10.New(db)
	register := func(path, hash string, narSize int64, deriver, sigs string) {
		t.Helper()
		err := q.RegisterValidPath(ctx, nix_v10.RegisterValidPathParams{
			Path: path, Hash: hash, Registrationtime: 1700000000,
			Deriver: sql.NullString{String: deriver, Valid: deriver != ""},
			Narsize: sql.NullInt64{Int64: narSize, Valid: narSize != 0},
			Sigs:    sql.NullString{String: sigs, Valid: sigs != ""},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	register(leafPath, "sha256:2ac9f3ca1a89c53e0d1ed32e8c65a1bc3b2e8c2a0b8d3eb5c2f1f0e9b4f5d3a1", 120, "", "")
	register(topPath, topHashNix32, 4096, "/nix/store/3p4d4f4j2n9d8zsg6xmmy4c8cn2fmlq4-top.drv", "cache.example.org-1:c2ln dummy-1:b3RoZXI=")
	register(brokenPath, "sha256:2ac9f3ca1a89c53e0d1ed32e8c65a1bc3b2e8c2a0b8d3eb5c2f1f0e9b4f5d3a1", 0, "", "")
	for _, ref := range [][2]int64{{2, 1}, {2, 2}} {
		if err := q.AddReference(ctx, nix_v10.AddReferenceParams{Referrer: ref[0], Reference: ref[1]}); err != nil {
			t.Fatal(err)
		}
	}
	return file
}

func TestPathInfoFromTheNixDatabase(t *testing.T) {
	ctx := context.Background()
	file := nixDB(t)
	db, err := nixstore.OpenDB(ctx, file, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()

	info, err := db.PathInfo(ctx, "1b9p07z77phvv2hf6gm9f28syp39f1ag")
	if err != nil {
		t.Fatal(err)
	}
	if info.StorePath != topPath || info.NarSize != 4096 || info.Deriver != "3p4d4f4j2n9d8zsg6xmmy4c8cn2fmlq4-top.drv" {
		t.Errorf("top: %+v", info)
	}
	if got := info.NarHash.String(); got != topHashNix32 {
		t.Errorf("NarHash %s, want %s", got, topHashNix32)
	}
	if want := []string{"0l6v2hr5yhxqjxg8kz9ahl6fs8mcfcgm-leaf", "1b9p07z77phvv2hf6gm9f28syp39f1ag-top"}; !reflect.DeepEqual(info.References, want) {
		t.Errorf("References %v, want %v (sorted, self included)", info.References, want)
	}
	if want := []string{"cache.example.org-1:c2ln", "dummy-1:b3RoZXI="}; !reflect.DeepEqual(info.Signatures, want) {
		t.Errorf("Signatures %v, want %v", info.Signatures, want)
	}

	// Base16, as Nix records it, becomes nix32, as narinfo has it.
	leaf, err := db.PathInfo(ctx, "0l6v2hr5yhxqjxg8kz9ahl6fs8mcfcgm")
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.NarHash.String(); !strings.HasPrefix(got, "sha256:") || len(got) != len("sha256:")+52 {
		t.Errorf("leaf NarHash %s is not nix32", got)
	}

	// The hash part of no path, though one sorts after it.
	if _, err := db.PathInfo(ctx, "0l6v2hr5yhxqjxg8kz9ahl6fs8mcfcgl"); !errors.Is(err, nixstore.ErrNotValid) {
		t.Errorf("missing path before another: err = %v, want nixstore.ErrNotValid", err)
	}
	if _, err := db.PathInfo(ctx, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"); !errors.Is(err, nixstore.ErrNotValid) {
		t.Errorf("missing path after all: err = %v, want nixstore.ErrNotValid", err)
	}
	if _, err := db.PathInfo(ctx, "2zzr1b0hyvq5arqsc5v4xjsx3qv5d7r5"); err == nil || errors.Is(err, nixstore.ErrNotValid) || !strings.Contains(err.Error(), "no NAR size") {
		t.Errorf("path without a NAR size: err = %v", err)
	}
}

func TestOpenDBRefusesWhatIsNotANixDatabase(t *testing.T) {
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "db.sqlite")
	if _, err := nixstore.OpenDB(ctx, missing, "/nix/store"); err == nil {
		t.Error("a missing file opened")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("opening a missing database created it: %v", err)
	}
	garbage := filepath.Join(t.TempDir(), "db.sqlite")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := nixstore.OpenDB(ctx, garbage, "/nix/store"); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("a corrupt file: err = %v, want an error naming it", err)
	}
}

func TestTheDatabaseIsOnlyRead(t *testing.T) {
	ctx := context.Background()
	file := nixDB(t)
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	db, err := nixstore.OpenDB(ctx, file, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.PathInfo(ctx, "1b9p07z77phvv2hf6gm9f28syp39f1ag"); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	after, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("the database file changed")
	}
	entries, err := os.ReadDir(filepath.Dir(file))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("reading the database left files beside it: %v", entries)
	}
}

func TestRegisteredAfterListsNewPathsInOrder(t *testing.T) {
	ctx := context.Background()
	file := nixDB(t)
	// top was built here; leaf, without a deriver, was added; broken
	// was substituted.
	raw, err := sql.Open("sqlite", "file:"+file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.ExecContext(ctx, `update ValidPaths set ultimate = 1 where path in (?, ?)`, topPath, leafPath); err != nil {
		t.Fatal(err)
	}
	_ = raw.Close()
	db, err := nixstore.OpenDB(ctx, file, "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()

	regs, err := db.RegisteredAfter(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []nixstore.Registration{{ID: 1, StorePath: leafPath}, {ID: 2, StorePath: topPath, Built: true}, {ID: 3, StorePath: brokenPath}}
	if !reflect.DeepEqual(regs, want) {
		t.Errorf("RegisteredAfter(0) = %+v, want %+v", regs, want)
	}
	if regs, err := db.RegisteredAfter(ctx, 1, 1); err != nil || !reflect.DeepEqual(regs, want[1:2]) {
		t.Errorf("RegisteredAfter(1, limit 1) = %+v, %v; want %+v", regs, err, want[1:2])
	}
	if last, err := db.LastIDBefore(ctx, time.Unix(1700000001, 0)); err != nil || last != 3 {
		t.Errorf("LastIDBefore(after the registrations) = %d, %v; want 3", last, err)
	}
	if last, err := db.LastIDBefore(ctx, time.Unix(1700000000, 0)); err != nil || last != 0 {
		t.Errorf("LastIDBefore(the second of the registrations) = %d, %v; want 0", last, err)
	}
}

// TestVersionChangesWithEveryCommit: the version read right after another
// process's commit differs from the one read before it, in WAL mode as Nix
// runs its database and with a rollback journal, while the version stays
// the same between commits.
func TestVersionChangesWithEveryCommit(t *testing.T) {
	for _, mode := range []string{"wal", "delete"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			file := nixDB(t)
			writer, err := sql.Open("sqlite", "file:"+file)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = writer.Close() }()
			writer.SetMaxOpenConns(1)
			if _, err := writer.ExecContext(ctx, "pragma journal_mode = "+mode); err != nil {
				t.Fatal(err)
			}
			db, err := nixstore.OpenDB(ctx, file, "/nix/store")
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = db.Close() }()
			if err := db.Watched(); err != nil {
				t.Fatalf("writes to a database in a temporary directory are not watched: %v", err)
			}
			version := func() int64 {
				t.Helper()
				v, err := db.Version(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			before := version()
			for i := range 20 {
				if again := version(); again != before {
					t.Fatalf("the version changed from %d to %d without a commit", before, again)
				}
				if _, err := writer.ExecContext(ctx, `update ValidPaths set registrationTime = ? where path = ?`, 1700000001+i, leafPath); err != nil {
					t.Fatal(err)
				}
				after := version()
				if after == before {
					t.Fatalf("commit %d left the version at %d", i+1, after)
				}
				before = after
			}
		})
	}
}
