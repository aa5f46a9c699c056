// Package nixstoretest makes Nix stores for tests: a store directory and
// a database that registers its paths, laid out as under /nix, so that
// tests of what reads a store need no Nix.
package nixstoretest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/sqlite/nix_v10"
)

// Schema is the part of Nix's database schema 10 (src/libstore/schema.sql)
// that path lookups read.
const Schema = `
CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
`

// Path is a store path to make. Files maps names relative to the path to
// contents; a content starting with "-> " makes a symlink to the rest, a
// name ending in "*" an executable file (without the star), a name ending
// in "/" an empty directory. Without files, the path is a single regular
// file. References are earlier paths, by index.
type Path struct {
	Name       string
	Files      map[string]string
	References []int
	Sigs       string
}

// Store is a made store: Root holds nix/store and nix/var/nix/db.
type Store struct {
	Root, Dir, Database string
	// Paths are the store paths made, named in /nix/store, in the order
	// given.
	Paths []string
}

// New makes a store under a temporary directory and registers paths in
// its database, with the NAR hashes and sizes of their files.
func New(t testing.TB, paths ...Path) *Store {
	t.Helper()
	root := t.TempDir()
	s := &Store{Root: root, Dir: filepath.Join(root, "nix", "store"), Database: filepath.Join(root, "nix", "var", "nix", "db", "db.sqlite")}
	for _, dir := range []string{s.Dir, filepath.Dir(s.Database)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+s.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, Schema); err != nil {
		t.Fatal(err)
	}
	q := nix_v10.New(db)
	for i, p := range paths {
		storePath := "/nix/store/" + RandomHash() + "-" + p.Name
		fsPath := filepath.Join(s.Dir, filepath.Base(storePath))
		if err := makeFiles(fsPath, p.Files); err != nil {
			t.Fatal(err)
		}
		hash := sha256.New()
		size, err := nixstore.WriteNar(hash, fsPath)
		if err != nil {
			t.Fatal(err)
		}
		err = q.RegisterValidPath(ctx, nix_v10.RegisterValidPathParams{
			Path: storePath, Hash: fmt.Sprintf("sha256:%x", hash.Sum(nil)), Registrationtime: 1700000000,
			Narsize: sql.NullInt64{Int64: size, Valid: true},
			Sigs:    sql.NullString{String: p.Sigs, Valid: p.Sigs != ""},
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range p.References {
			if ref >= i {
				t.Fatalf("path %d refers to path %d, which is not made before it", i, ref)
			}
			if err := q.AddReference(ctx, nix_v10.AddReferenceParams{Referrer: int64(i + 1), Reference: int64(ref + 1)}); err != nil {
				t.Fatal(err)
			}
		}
		s.Paths = append(s.Paths, storePath)
	}
	return s
}

// FSPath is where the store path storePath is in the made store.
func (s *Store) FSPath(storePath string) string {
	return filepath.Join(s.Dir, filepath.Base(storePath))
}

// RandomHash is a random store path hash part.
func RandomHash() string {
	b := make([]byte, 20)
	_, _ = io.ReadFull(rand.Reader, b)
	return nixbase32.EncodeToString(b)
}

func makeFiles(fsPath string, files map[string]string) error {
	if files == nil {
		return os.WriteFile(fsPath, []byte("a single file\n"), 0o444)
	}
	if err := os.Mkdir(fsPath, 0o755); err != nil {
		return err
	}
	for name, content := range files {
		mode := os.FileMode(0o444)
		if trimmed, ok := strings.CutSuffix(name, "*"); ok {
			name, mode = trimmed, 0o555
		}
		p := filepath.Join(fsPath, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		var err error
		switch target, isLink := strings.CutPrefix(content, "-> "); {
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		case isLink:
			err = os.Symlink(target, p)
		default:
			err = os.WriteFile(p, []byte(content), mode)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
