// Package verify checks a binary cache's integrity, as `caddy nix-cache
// verify` reports it: every narinfo passes the cache's one rule, names a
// NAR that is there and matches it, and references paths that are there,
// and its signatures under the given keys verify.
//
// It reads through storage only, and knows nothing of Caddy, HTTP or the
// index: a verification is of the files, which are the truth.
package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	"math"
	"strings"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Options says what Cache checks beyond the always-on checks.
type Options struct {
	// PublicKeys: every signature under one of these keys' names must verify.
	PublicKeys []signature.PublicKey
	// NarHash: decompress every NAR and check NarHash and NarSize.
	NarHash bool
}

// Report is the outcome of a verification: problems make the cache
// unclean; notes (orphaned NARs, uploads in progress) do not.
type Report struct {
	Narinfos int
	Problems []string
	Notes    []string
}

// Cache checks every narinfo of a file:// cache directory: it parses,
// describes the path its name says, its NAR is present with the FileHash and
// FileSize it states (and, with narHash, the NarHash and NarSize), its
// references are present, and its signatures under the given keys verify.
// Each overlay is checked the same way, its references and NARs found in
// it or in the cache proper. NARs that no narinfo names are listed as
// notes.
func Cache(ctx context.Context, store storage.Store, opts Options) (*Report, error) {
	// The store directory is the one the cache announces.
	storeDir := "/nix/store"
	if data, err := storage.ReadAll(ctx, store, "nix-cache-info", nixfmt.MaxSmallDocumentSize); err == nil {
		if stored := nixfmt.CacheInfoStoreDir(data); stored != "" {
			storeDir = stored
		}
	}
	report := new(Report)
	present, err := narinfoHashes(ctx, store)
	if err != nil {
		return nil, err
	}
	if err := checkLayout(ctx, store, storeDir, present, "", opts, report); err != nil {
		return nil, err
	}
	records, err := overlay.List(ctx, store)
	if err != nil {
		report.Problems = append(report.Problems, err.Error())
	}
	for _, rec := range records {
		view := overlay.Store(store, rec.ID)
		own, err := narinfoHashes(ctx, view)
		if err != nil {
			return nil, err
		}
		maps.Copy(own, present)
		if err := checkLayout(ctx, storage.Layered(view, store), storeDir, own, "overlay "+rec.String()+": ", opts, report); err != nil {
			return nil, err
		}
	}
	var live, abandoned []string
	if lister, ok := store.(storage.TemporaryLister); ok {
		if live, abandoned, err = lister.Temporaries(ctx); err != nil {
			return nil, fmt.Errorf("listing uploads in progress: %w", err)
		}
	}
	for _, name := range live {
		report.Notes = append(report.Notes, "upload in progress: "+name)
	}
	for _, name := range abandoned {
		report.Problems = append(report.Problems, "leftover of an interrupted upload (removed when the server starts): "+name)
	}
	return report, nil
}

// narinfoHashes are the hash parts of the narinfos directly in store.
func narinfoHashes(ctx context.Context, store storage.Store) (map[string]bool, error) {
	entries, err := store.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("listing the cache: %w", err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		if hash, ok := strings.CutSuffix(e.Name, ".narinfo"); ok {
			present[hash] = true
		}
	}
	return present, nil
}

// checkLayout checks the narinfos store lists, with the paths present,
// and notes the NARs it lists that none names; prefix says whose they
// are.
func checkLayout(ctx context.Context, store storage.Store, storeDir string, present map[string]bool, prefix string, opts Options, report *Report) error {
	entries, err := store.List(ctx, "")
	if err != nil {
		return fmt.Errorf("listing the cache: %w", err)
	}
	used := map[string]bool{}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name, ".narinfo") {
			continue
		}
		report.Narinfos++
		for _, problem := range verifyNarInfo(ctx, store, storeDir, e.Name, present, used, opts) {
			report.Problems = append(report.Problems, prefix+e.Name+": "+problem)
		}
	}
	nars, err := store.List(ctx, "nar")
	if err != nil {
		return fmt.Errorf("listing nar/: %w", err)
	}
	for _, nar := range nars {
		if !used[nar.Name] {
			report.Notes = append(report.Notes, prefix+"orphaned NAR (no narinfo names it): "+nar.Name)
		}
	}
	return nil
}

// verifyNarInfo checks one narinfo and returns its problems.
func verifyNarInfo(ctx context.Context, store storage.Store, storeDir, name string, present, used map[string]bool, opts Options) []string {
	data, err := storage.ReadAll(ctx, store, name, nixfmt.MaxNarInfoSize)
	if err != nil {
		return []string{err.Error()}
	}
	// The rule that upload and serving apply: what it refuses is never
	// served, so it is a problem here.
	info, err := nixfmt.Admit(data, storeDir, strings.TrimSuffix(name, ".narinfo"))
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, ref := range info.References {
		if len(ref) < cacheurl.HashLen || !present[ref[:cacheurl.HashLen]] {
			problems = append(problems, "reference "+ref+" is missing")
		}
	}
	for _, sig := range info.Signatures {
		for _, key := range opts.PublicKeys {
			if sig.Name == key.Name && !key.Verify(nixfmt.Fingerprint(info), sig) {
				problems = append(problems, "signature by "+sig.Name+" does not verify")
			}
		}
	}
	used[info.URL] = true
	f, _, err := store.Open(ctx, info.URL)
	if err != nil {
		return append(problems, "NAR "+info.URL+" is missing")
	}
	defer func() { _ = f.Close() }()
	var meta upload.NarMeta
	if opts.NarHash {
		compression, _ := nixfmt.NarCompression(info.URL)
		meta, err = upload.ReceiveNar(io.Discard, f, compression, math.MaxInt64-1, -1)
		if err != nil {
			return append(problems, fmt.Sprintf("NAR %s: %v", info.URL, err))
		}
	} else {
		hasher := sha256.New()
		meta.FileSize, err = io.Copy(hasher, f)
		if err != nil {
			return append(problems, fmt.Sprintf("reading NAR %s: %v", info.URL, err))
		}
		copy(meta.FileHash[:], hasher.Sum(nil))
	}
	if info.FileHash != nil && !bytes.Equal(info.FileHash.Digest(), meta.FileHash[:]) {
		problems = append(problems, fmt.Sprintf("FileHash %s, but the NAR's sha256 is %s", info.FileHash, nixbase32.EncodeToString(meta.FileHash[:])))
	}
	if info.FileSize != 0 && int64(info.FileSize) != meta.FileSize {
		problems = append(problems, fmt.Sprintf("FileSize %d, but the NAR has %d bytes", info.FileSize, meta.FileSize))
	}
	if opts.NarHash {
		if !bytes.Equal(info.NarHash.Digest(), meta.NarHash[:]) {
			problems = append(problems, fmt.Sprintf("NarHash %s, but the NAR's is sha256:%s", info.NarHash, nixbase32.EncodeToString(meta.NarHash[:])))
		}
		if int64(info.NarSize) != meta.NarSize {
			problems = append(problems, fmt.Sprintf("NarSize %d, but the NAR has %d bytes", info.NarSize, meta.NarSize))
		}
	}
	return problems
}
