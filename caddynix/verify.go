package caddynix

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// verifyOptions says what verifyCache checks beyond the always-on checks.
type verifyOptions struct {
	// publicKeys: every signature under one of these keys' names must verify.
	publicKeys []signature.PublicKey
	// narHash: decompress every NAR and check NarHash and NarSize.
	narHash bool
}

// verifyReport is the outcome of a verification: problems make the cache
// unclean; notes (orphaned NARs, uploads in progress) do not.
type verifyReport struct {
	narinfos int
	problems []string
	notes    []string
}

// verifyCache checks every narinfo of a file:// cache directory: it parses,
// describes the path its name says, its NAR is present with the FileHash and
// FileSize it states (and, with narHash, the NarHash and NarSize), its
// references are present, and its signatures under the given keys verify.
// NARs that no narinfo names are listed as notes.
func verifyCache(root string, opts verifyOptions) (*verifyReport, error) {
	dir, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("opening cache root: %w", err)
	}
	defer func() { _ = dir.Close() }()
	entries, err := fs.ReadDir(dir.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("listing cache root: %w", err)
	}
	report := new(verifyReport)
	present := map[string]bool{}
	var narinfos []string
	for _, e := range entries {
		if hash, ok := strings.CutSuffix(e.Name(), ".narinfo"); ok && e.Type().IsRegular() {
			present[hash] = true
			narinfos = append(narinfos, e.Name())
		}
		if strings.HasPrefix(e.Name(), tempPrefix) {
			report.tempFile(dir, e.Name())
		}
	}
	slices.Sort(narinfos)
	used := map[string]bool{}
	for _, name := range narinfos {
		report.narinfos++
		for _, problem := range verifyNarInfo(dir, name, present, used, opts) {
			report.problems = append(report.problems, name+": "+problem)
		}
	}
	narEntries, err := fs.ReadDir(dir.FS(), "nar")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing nar/: %w", err)
	}
	for _, e := range narEntries {
		name := "nar/" + e.Name()
		switch {
		case strings.HasPrefix(e.Name(), tempPrefix):
			report.tempFile(dir, name)
		case !used[name]:
			report.notes = append(report.notes, "orphaned NAR (no narinfo names it): "+name)
		}
	}
	for _, sub := range []string{"log", "realisations"} {
		subEntries, err := fs.ReadDir(dir.FS(), sub)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("listing %s/: %w", sub, err)
		}
		for _, e := range subEntries {
			if strings.HasPrefix(e.Name(), tempPrefix) {
				report.tempFile(dir, sub+"/"+e.Name())
			}
		}
	}
	return report, nil
}

// tempFile notes an upload in progress, or reports a dead writer's
// leftover as a problem: the server removes those when it starts.
func (r *verifyReport) tempFile(dir *os.Root, name string) {
	if tempFileInUse(dir, name) {
		r.notes = append(r.notes, "upload in progress: "+name)
	} else {
		r.problems = append(r.problems, "leftover of an interrupted upload (removed when the server starts): "+name)
	}
}

// verifyNarInfo checks one narinfo and returns its problems.
func verifyNarInfo(dir *os.Root, name string, present, used map[string]bool, opts verifyOptions) []string {
	data, err := dir.ReadFile(name)
	if err != nil {
		return []string{err.Error()}
	}
	info, err := parseNarInfo(data)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	hash := strings.TrimSuffix(name, ".narinfo")
	if !strings.HasPrefix(path.Base(info.StorePath), hash+"-") {
		problems = append(problems, fmt.Sprintf("describes %s, not a path with hash %s", info.StorePath, hash))
	}
	for _, ref := range info.References {
		if len(ref) < storePathHashLen || !present[ref[:storePathHashLen]] {
			problems = append(problems, "reference "+ref+" is missing")
		}
	}
	for _, sig := range info.Signatures {
		for _, key := range opts.publicKeys {
			if sig.Name == key.Name && !key.Verify(fingerprint(info), sig) {
				problems = append(problems, "signature by "+sig.Name+" does not verify")
			}
		}
	}
	nar, ok := classify("/" + info.URL)
	if !ok || nar.kind != kindNar {
		return append(problems, "URL "+info.URL+" is not a NAR of this cache")
	}
	used[info.URL] = true
	f, err := dir.Open(filepath.FromSlash(info.URL))
	if err != nil {
		return append(problems, "NAR "+info.URL+" is missing")
	}
	defer func() { _ = f.Close() }()
	var meta narMeta
	if opts.narHash {
		compression, _ := narCompression(info.URL)
		meta, err = receiveNar(io.Discard, f, compression, math.MaxInt64-1)
		if err != nil {
			return append(problems, fmt.Sprintf("NAR %s: %v", info.URL, err))
		}
	} else {
		hasher := sha256.New()
		meta.fileSize, err = io.Copy(hasher, f)
		if err != nil {
			return append(problems, fmt.Sprintf("reading NAR %s: %v", info.URL, err))
		}
		copy(meta.fileHash[:], hasher.Sum(nil))
	}
	if info.FileHash != nil && !bytes.Equal(info.FileHash.Digest(), meta.fileHash[:]) {
		problems = append(problems, fmt.Sprintf("FileHash %s, but the NAR's sha256 is %s", info.FileHash, nixbase32.EncodeToString(meta.fileHash[:])))
	}
	if info.FileSize != 0 && int64(info.FileSize) != meta.fileSize {
		problems = append(problems, fmt.Sprintf("FileSize %d, but the NAR has %d bytes", info.FileSize, meta.fileSize))
	}
	if opts.narHash {
		if !bytes.Equal(info.NarHash.Digest(), meta.narHash[:]) {
			problems = append(problems, fmt.Sprintf("NarHash %s, but the NAR's is sha256:%s", info.NarHash, nixbase32.EncodeToString(meta.narHash[:])))
		}
		if int64(info.NarSize) != meta.narSize {
			problems = append(problems, fmt.Sprintf("NarSize %d, but the NAR has %d bytes", info.NarSize, meta.narSize))
		}
	}
	return problems
}
