package sources

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/cargoxx-pkgs/runner/internal/nixstore"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// LiveOptions describe a live store, with placeholders expanded; see the
// nix_cache handler's `store` option for what each means and defaults to.
type LiveOptions struct {
	Dir, Database, LogDir, Compression string
}

// liveStore is a local Nix store served live.
type liveStore struct {
	// dir is where the paths are read; storeDir is what they are named.
	dir, storeDir string
	logDir        string
	compression   string
	db            *nixstore.DB
	// verified remembers, by store path and NAR hash, the paths whose
	// files were found to make their registered NAR: their NARs are then
	// sent with sendfile(2) and checked by size only. The store is
	// read-only, so only a path collected and built again can differ,
	// and that one has another NAR hash, or is cut short when it goes.
	verified *boundedMap[string, bool]
	// signed keeps signed narinfos by their unsigned text: signing took
	// a fifth of a narinfo request's time.
	signed *boundedMap[string, []byte]
	// lookups keep what the database said of a hash part, and the
	// narinfo made of it, at the database's version: looking a path up
	// took three quarters of a narinfo request's time.
	lookups *boundedMap[string, liveLookup]
}

// liveLookup is what the database said of a hash part at a version: the
// path's registration, or nil for a path it does not hold.
type liveLookup struct {
	version int64
	info    *nixstore.PathInfo
	// narInfo is the signed narinfo, once made.
	narInfo []byte
}

// Bounds of the live store's memos: a few hundred closures' worth.
const (
	maxVerifiedPaths = 1 << 16
	maxSignedLive    = 1 << 14
	maxLiveLookups   = 1 << 16
)

// openLiveStore opens the store's database. A store whose database is
// missing or unreadable stops the configuration, with what to fix.
func openLiveStore(ctx context.Context, cfg LiveOptions, storeDir string) (*liveStore, error) {
	l := &liveStore{
		storeDir: storeDir, dir: cfg.Dir, compression: cfg.Compression,
		verified: newBoundedMap[string, bool](maxVerifiedPaths),
		signed:   newBoundedMap[string, []byte](maxSignedLive),
		lookups:  newBoundedMap[string, liveLookup](maxLiveLookups),
	}
	if l.dir == "" {
		l.dir = storeDir
	}
	l.dir = filepath.Clean(l.dir)
	if l.compression == "" {
		l.compression = "none"
	}
	if l.compression != "none" && l.compression != "zstd" {
		return nil, fmt.Errorf("store %s: compression %q is not none or zstd", l.dir, l.compression)
	}
	if info, err := os.Stat(l.dir); err != nil || !info.IsDir() {
		return nil, fmt.Errorf("store %s is not a directory (%v): name the Nix store whose paths to serve, e.g. `store /nix/store`", l.dir, err)
	}
	// /nix/store has its state in /nix/var/nix.
	state := filepath.Join(filepath.Dir(l.dir), "var")
	database := cfg.Database
	if database == "" {
		database = filepath.Join(state, "nix", "db", "db.sqlite")
	}
	l.logDir = cfg.LogDir
	if l.logDir == "" {
		l.logDir = filepath.Join(state, "log", "nix", "drvs")
	}
	if _, err := os.Stat(database); err != nil {
		return nil, fmt.Errorf("store %s: its database: %w; set `database` to the store's db.sqlite", l.dir, err)
	}
	db, err := nixstore.OpenDB(ctx, database, storeDir)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", l.dir, err)
	}
	l.db = db
	return l, nil
}

func (l *liveStore) close() error { return l.db.Close() }

// fsPath is where the store path named storePath is read.
func (l *liveStore) fsPath(storePath string) string {
	return filepath.Join(l.dir, filepath.Base(storePath))
}

// narInfo describes a valid path as a binary cache does. Its NAR's URL
// names the NAR hash, so that a path rebuilt differently since is not
// answered with the wrong NAR, and the store path's hash, through which
// the NAR is found; Nix keeps the query when it resolves the URL.
func (l *liveStore) narInfo(info *nixstore.PathInfo) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{
		StorePath:   info.StorePath,
		URL:         liveNarURL(info, l.compression),
		Compression: l.compression,
		NarHash:     info.NarHash,
		NarSize:     info.NarSize,
		References:  info.References,
		Deriver:     info.Deriver,
		CA:          info.CA,
	}
	if err := nixfmt.CheckPath(ni, l.storeDir, hashPart(info.StorePath)); err != nil {
		return nil, fmt.Errorf("the database's record: %w", err)
	}
	if l.compression == "none" {
		ni.FileHash, ni.FileSize = info.NarHash, info.NarSize
	}
	for _, text := range info.Signatures {
		// A signature the store cannot vouch for is left out, not
		// passed on: clients would reject the narinfo.
		if sig, err := signature.ParseSignature(text); err == nil {
			ni.Signatures = append(ni.Signatures, sig)
		}
	}
	return ni, nil
}

// liveNarURL is where a live path's NAR is asked for.
func liveNarURL(info *nixstore.PathInfo, compression string) string {
	ext := nixfmt.NarCompressions[compression]
	return "nar/" + info.NarHash.Format(nixhash.NixBase32, false) + ext + "?hash=" + hashPart(info.StorePath)
}

// hashPart is the hash part of a store path.
func hashPart(storePath string) string {
	return filepath.Base(storePath)[:cacheurl.HashLen]
}

// liveNarRequest reads a NAR request that names a live path: its NAR hash and
// the hash part of its store path, from `nar/<narhash>.nar[.zst]?hash=…`.
func liveNarRequest(r *http.Request, req cacheurl.Request) (narHash, hash, ext string, ok bool) {
	hash = r.URL.Query().Get("hash")
	if !cacheurl.IsNix32Hash(hash) {
		return "", "", "", false
	}
	name := filepath.Base(req.File)
	narHash, ext = name[:52], name[52:]
	if ext != ".nar" && ext != ".nar.zst" {
		return "", "", "", false
	}
	return narHash, hash, ext, true
}
