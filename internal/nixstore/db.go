// Package nixstore reads a local Nix store without Nix: what its database
// says about a valid path, and the path's NAR and listing, made from the
// files themselves. It never writes the store or its database.
package nixstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cargoxx-pkgs/runner/internal/fswatch"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/sqlite/nix_v10"
	"github.com/nix-community/go-nix/pkg/storepath"
	_ "modernc.org/sqlite" // the "sqlite" driver, pure Go
)

// ErrNotValid is returned for a store path the database does not hold as
// valid: never built or substituted, or garbage collected since.
var ErrNotValid = errors.New("not a valid path in the store")

// PathInfo is what the database records about one valid store path.
type PathInfo struct {
	// StorePath is the path's absolute name in the store's logical
	// directory, e.g. /nix/store/<hash>-<name>.
	StorePath string
	// NarHash is the sha256 of the path's NAR, in nix32 as narinfo has it.
	NarHash *nixhash.HashWithEncoding
	NarSize uint64
	// References and Deriver are base names, References sorted.
	References []string
	Deriver    string
	// Signatures are the store's own, e.g. those of the cache a path was
	// substituted from, in Nix's `name:base64` form.
	Signatures []string
	// CA is the path's content address, if it has one.
	CA         string
	Registered time.Time
}

// DB is a Nix store's database (db.sqlite, schema 10 and later), opened
// read-only: nix-daemon keeps writing it, and what it commits is seen by
// the next query.
type DB struct {
	db       *sql.DB
	stmts    statements
	storeDir string

	// version is the connection that asks for the database's version,
	// which only one connection's answers can be compared.
	versionMu   sync.Mutex
	versionConn *sql.Conn
	versionStmt *sql.Stmt
	// versionBase tells the versions of one connection from those of
	// the connection before it.
	versionBase int64
	// writes, when the database's directory can be watched, tells of
	// every write to the database's files: while there has been none,
	// the version last read holds without a query.
	writes      *fswatch.Watch
	writesErr   error
	files       map[string]bool
	lastVersion int64
}

// busyTimeout is how long a query waits for a writer holding the database
// locked (a rollback journal; in WAL mode readers never wait) before the
// request fails.
const busyTimeout = 2 * time.Second

// maxConnections bounds the database connections open at once.
const maxConnections = 8

// OpenDB opens the database file at file, whose paths live in the logical
// store directory storeDir (e.g. /nix/store). It fails when the file is
// missing or is not a Nix database.
func OpenDB(ctx context.Context, file, storeDir string) (*DB, error) {
	dsn := (&url.URL{Scheme: "file", OmitHost: true, Path: file, RawQuery: url.Values{
		"mode":    {"ro"},
		"_pragma": {fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()), "query_only(1)"},
	}.Encode()}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening Nix database %s: %w", file, err)
	}
	// Each connection keeps a page cache of its own; lookups are short,
	// so a few connections serve any number of requests.
	db.SetMaxOpenConns(maxConnections)
	db.SetMaxIdleConns(maxConnections)
	var tables int
	err = db.QueryRowContext(ctx, `select count(*) from sqlite_master where type = 'table' and name in ('ValidPaths', 'Refs')`).Scan(&tables)
	if err == nil && tables != 2 {
		err = errors.New("it has no ValidPaths and Refs tables")
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("reading Nix database %s: %w (is it the db.sqlite of a Nix store, readable by this process?)", file, err)
	}
	d := &DB{db: db, storeDir: storeDir}
	d.watchWrites(file)
	return d, nil
}

// watchWrites watches the database's directory for writes to its files:
// the database, and its write-ahead log or rollback journal, which every
// commit writes with write(2) before it is seen.
func (d *DB) watchWrites(file string) {
	d.writes, d.writesErr = fswatch.Open(filepath.Dir(file))
	name := filepath.Base(file)
	d.files = map[string]bool{name: true, name + "-wal": true, name + "-journal": true}
}

// Watched says why every Version asks the database, or nil when writes to
// its files are watched and Version asks only after one.
func (d *DB) Watched() error { return d.writesErr }

// Close closes the database.
func (d *DB) Close() error {
	d.versionMu.Lock()
	var versionErr error
	if d.versionConn != nil {
		versionErr = errors.Join(d.versionStmt.Close(), d.versionConn.Close())
		d.versionConn = nil
	}
	if d.writes != nil {
		versionErr = errors.Join(versionErr, d.writes.Close())
		d.writes = nil
	}
	d.versionMu.Unlock()
	return errors.Join(versionErr, d.stmts.close(), d.db.Close())
}

// Version is a number that changes whenever Nix commits anything to the
// database (SQLite's data_version, always asked on the same connection):
// what was read while it had one value holds until it has another. Where
// the database's files are watched, it is asked only after they were
// written to, and otherwise costs a fraction of a lookup.
func (d *DB) Version(ctx context.Context) (int64, error) {
	d.versionMu.Lock()
	defer d.versionMu.Unlock()
	if d.writes != nil {
		written := false
		err := d.writes.Drain(func(name string) { written = written || name == "" || d.files[name] })
		if err != nil {
			// The directory went away: ask on every call from now on.
			_ = d.writes.Close()
			d.writes, d.writesErr = nil, err
		} else if !written && d.versionConn != nil {
			return d.lastVersion, nil
		}
	}
	if d.versionConn == nil {
		conn, err := d.db.Conn(ctx)
		if err != nil {
			return 0, fmt.Errorf("reading the Nix database's version: %w", err)
		}
		stmt, err := conn.PrepareContext(ctx, `pragma data_version`)
		if err != nil {
			_ = conn.Close()
			return 0, fmt.Errorf("reading the Nix database's version: %w", err)
		}
		d.versionConn, d.versionStmt = conn, stmt
		d.versionBase += 1 << 40
	}
	var version int64
	if err := d.versionStmt.QueryRowContext(ctx).Scan(&version); err != nil {
		// The next call starts again on a fresh connection.
		_ = d.versionStmt.Close()
		_ = d.versionConn.Close()
		d.versionConn = nil
		return 0, fmt.Errorf("reading the Nix database's version: %w", err)
	}
	d.lastVersion = d.versionBase + version
	return d.lastVersion, nil
}

// PathInfo looks up the valid path whose hash part is hash. A path the
// database does not hold is ErrNotValid; any other error is the
// database's (locked, corrupt, unreadable).
func (d *DB) PathInfo(ctx context.Context, hash string) (*PathInfo, error) {
	prefix := d.storeDir + "/" + hash + "-"
	// One snapshot for the three queries: a path collected meanwhile is
	// either whole or gone, never without its references.
	tx, err := d.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("reading the Nix database: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	queries := nix_v10.New(&preparedTx{tx: tx, db: d.db, stmts: &d.stmts})
	// The query answers the first path at or after prefix, which is
	// another path's when hash has none.
	found, err := queries.QueryPathFromHashPart(ctx, prefix)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !strings.HasPrefix(found, prefix)) {
		return nil, ErrNotValid
	}
	if err != nil {
		return nil, fmt.Errorf("looking up %s in the Nix database: %w", hash, err)
	}
	row, err := queries.QueryPathInfo(ctx, found)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotValid // collected between the two queries
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s from the Nix database: %w", found, err)
	}
	refs, err := queries.QueryReferences(ctx, row.ID)
	if err != nil {
		return nil, fmt.Errorf("reading the references of %s from the Nix database: %w", found, err)
	}
	return d.pathInfo(found, row, refs)
}

// pathInfo checks a database row and turns it into a PathInfo: a row that
// does not describe a NAR a client could check is an error, not a path.
func (d *DB) pathInfo(found string, row nix_v10.QueryPathInfoRow, refs []string) (*PathInfo, error) {
	if _, err := storepath.FromString(path.Base(found)); err != nil {
		return nil, fmt.Errorf("the Nix database holds %q, which is not a store path: %w", found, err)
	}
	recorded, err := nixhash.ParseAny(row.Hash, nil)
	if err == nil && recorded.Algo() != nixhash.SHA256 {
		err = fmt.Errorf("it is %s", recorded.Algo())
	}
	if err != nil {
		return nil, fmt.Errorf("the Nix database records NAR hash %q for %s, which is not a sha256 hash: %w", row.Hash, found, err)
	}
	narHash := nixhash.MustNewHashWithEncoding(nixhash.SHA256, recorded.Digest(), nixhash.NixBase32, true)
	if !row.Narsize.Valid || row.Narsize.Int64 <= 0 {
		return nil, fmt.Errorf("the Nix database records no NAR size for %s; `nix-store --verify --check-contents` as root fills it in", found)
	}
	info := &PathInfo{
		StorePath:  found,
		NarHash:    narHash,
		NarSize:    uint64(row.Narsize.Int64),
		CA:         row.Ca.String,
		Registered: time.Unix(row.Registrationtime, 0),
	}
	for _, ref := range refs {
		info.References = append(info.References, path.Base(ref))
	}
	sort.Strings(info.References)
	if row.Deriver.Valid && row.Deriver.String != "" {
		info.Deriver = path.Base(row.Deriver.String)
	}
	info.Signatures = strings.Fields(row.Sigs.String)
	return info, nil
}

// statements keeps go-nix's queries prepared: parsing them again for
// every lookup took a fifth of a narinfo request's time.
type statements struct {
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

func (s *statements) get(ctx context.Context, db *sql.DB, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if stmt, ok := s.stmts[query]; ok {
		return stmt, nil
	}
	stmt, err := db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if s.stmts == nil {
		s.stmts = make(map[string]*sql.Stmt)
	}
	s.stmts[query] = stmt
	return stmt, nil
}

func (s *statements) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, stmt := range s.stmts {
		errs = append(errs, stmt.Close())
	}
	s.stmts = nil
	return errors.Join(errs...)
}

// preparedTx runs go-nix's queries in a transaction with the prepared
// statements (nix_v10.DBTX).
type preparedTx struct {
	tx    *sql.Tx
	db    *sql.DB
	stmts *statements
}

func (p *preparedTx) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	stmt, err := p.stmts.get(ctx, p.db, query)
	if err != nil {
		return nil, err
	}
	return p.tx.StmtContext(ctx, stmt), nil
}

func (p *preparedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return p.tx.ExecContext(ctx, query, args...)
}

func (p *preparedTx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return p.tx.PrepareContext(ctx, query)
}

func (p *preparedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	stmt, err := p.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return stmt.QueryContext(ctx, args...)
}

func (p *preparedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	stmt, err := p.stmt(ctx, query)
	if err != nil {
		// sql.Row carries no error of its own making: the query, run
		// unprepared, reports the same failure.
		return p.tx.QueryRowContext(ctx, query, args...)
	}
	return stmt.QueryRowContext(ctx, args...)
}

// Registration is one row of the database's valid paths, in the order
// Nix registered them.
type Registration struct {
	// ID grows with every path Nix registers.
	ID        int64
	StorePath string
	// Built is whether this store made the path itself (Nix's "ultimate"
	// column: built or added here, not substituted) from a derivation.
	Built bool
}

// RegisteredAfter lists the valid paths registered after the one whose ID
// is afterID, oldest first: a path's references before the path. It lists
// at most limit of them.
func (d *DB) RegisteredAfter(ctx context.Context, afterID int64, limit int) ([]Registration, error) {
	rows, err := d.db.QueryContext(ctx,
		`select id, path, coalesce(ultimate, 0), coalesce(deriver, '') from ValidPaths where id > ? order by id limit ?`, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("listing new paths in the Nix database: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var regs []Registration
	for rows.Next() {
		var r Registration
		var ultimate int64
		var deriver string
		if err := rows.Scan(&r.ID, &r.StorePath, &ultimate, &deriver); err != nil {
			return nil, fmt.Errorf("listing new paths in the Nix database: %w", err)
		}
		r.Built = ultimate != 0 && deriver != ""
		regs = append(regs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing new paths in the Nix database: %w", err)
	}
	return regs, nil
}

// LastIDBefore is the ID of the last path registered before t, to the
// second; 0 when there is none.
func (d *DB) LastIDBefore(ctx context.Context, t time.Time) (int64, error) {
	var id int64
	if err := d.db.QueryRowContext(ctx, `select coalesce(max(id), 0) from ValidPaths where registrationTime < ?`, t.Unix()).Scan(&id); err != nil {
		return 0, fmt.Errorf("reading the Nix database: %w", err)
	}
	return id, nil
}
