package nixfmt

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// narinfoKeys are the keys Nix reads from a narinfo. Nix ignores any other
// key, and so does ParseNarInfo.
var narinfoKeys = map[string]bool{
	"StorePath": true, "URL": true, "Compression": true, "FileHash": true,
	"FileSize": true, "NarHash": true, "NarSize": true, "References": true,
	"Deriver": true, "System": true, "Sig": true, "CA": true,
}

// ParseNarInfo parses a narinfo with Nix's rules, which are more lenient
// than go-nix's parser in one way (unknown keys are ignored) and stricter in
// others (every line ends in a newline; StorePath, URL, NarHash and a
// positive NarSize are required; only Sig may repeat).
func ParseNarInfo(data []byte) (*narinfo.NarInfo, error) {
	if len(data) == 0 {
		return nil, errors.New("narinfo is empty")
	}
	if data[len(data)-1] != '\n' {
		return nil, errors.New("narinfo's last line does not end in a newline")
	}
	if bytes.IndexByte(data, '\r') >= 0 {
		// Nix keeps a carriage return in the value, breaking hashes and URLs.
		return nil, errors.New("narinfo has a carriage return: lines must end in a bare newline")
	}
	// The fields are read here rather than by go-nix's parser, which
	// allocates a megabyte per narinfo; the rules for each value are its.
	info := &narinfo.NarInfo{}
	seen := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		key, value, ok := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
		if !ok {
			return nil, fmt.Errorf("narinfo line %q is not `Key: value`", strings.TrimSpace(line))
		}
		if !narinfoKeys[key] {
			continue
		}
		if key != "Sig" && seen[key] {
			return nil, fmt.Errorf("narinfo has more than one %s line", key)
		}
		seen[key] = true
		if strings.Contains(value, ": ") {
			return nil, fmt.Errorf("parsing narinfo: found separator ': ' twice or more in %s", strings.TrimSpace(line))
		}
		if err := setNarInfoField(info, key, value); err != nil {
			return nil, fmt.Errorf("parsing narinfo: %w", err)
		}
	}
	if info.Compression == "" {
		// Nix's default, from before compression was configurable.
		info.Compression = "bzip2"
	}
	switch {
	case info.StorePath == "":
		return nil, errors.New("narinfo has no StorePath")
	case info.URL == "":
		return nil, errors.New("narinfo has no URL")
	case info.NarHash == nil:
		return nil, errors.New("narinfo has no NarHash")
	case info.NarHash.Algo() != nixhash.SHA256:
		return nil, fmt.Errorf("narinfo NarHash %s is not a sha256 hash", info.NarHash)
	case info.NarSize == 0:
		return nil, errors.New("narinfo has no positive NarSize")
	}
	if info.CA != "" {
		if err := CheckContentAddress(info.CA); err != nil {
			return nil, fmt.Errorf("narinfo %w", err)
		}
	}
	return info, nil
}

// setNarInfoField sets one field of a narinfo from its line's value.
func setNarInfoField(info *narinfo.NarInfo, key, value string) error {
	var err error
	switch key {
	case "StorePath":
		info.StorePath = value
	case "URL":
		info.URL = value
	case "Compression":
		info.Compression = value
	case "FileHash":
		info.FileHash, err = nixhash.ParseAny(value, nil)
	case "FileSize":
		info.FileSize, err = strconv.ParseUint(value, 10, 0)
	case "NarHash":
		info.NarHash, err = nixhash.ParseAny(value, nil)
	case "NarSize":
		info.NarSize, err = strconv.ParseUint(value, 10, 0)
	case "References":
		if value != "" {
			info.References = append(info.References, strings.Split(value, " ")...)
		}
	case "Deriver":
		if value != "unknown-deriver" {
			info.Deriver = value
		}
	case "System":
		info.System = value
	case "Sig":
		// go-nix's own error for a bad Sig loses the reason.
		var sig signature.Signature
		if sig, err = signature.ParseSignature(value); err != nil {
			return fmt.Errorf("signature %q: %w", value, err)
		}
		info.Signatures = append(info.Signatures, sig)
	case "CA":
		info.CA = value
	}
	if err != nil {
		return fmt.Errorf("%s %q: %w", key, value, err)
	}
	return nil
}

// Fingerprint is the message a narinfo signature signs:
// 1;<store path>;sha256:<nix32 NarHash>;<NarSize>;<sorted full reference paths>
// go-nix's Fingerprint neither sorts the references nor knows other store
// directories, so it is not used.
func Fingerprint(info *narinfo.NarInfo) string {
	storeDir := path.Dir(info.StorePath)
	refs := make([]string, len(info.References))
	for i, ref := range info.References {
		refs[i] = storeDir + "/" + ref
	}
	slices.Sort(refs)
	return "1;" + info.StorePath + ";" + info.NarHash.Format(nixhash.NixBase32, true) + ";" +
		fmt.Sprint(info.NarSize) + ";" + strings.Join(refs, ",")
}

// Sign adds a signature by every key. Signatures the narinfo already
// carries are kept, except those under one of the keys' names, which are
// replaced by a fresh one, so no key name ever appears twice.
func Sign(info *narinfo.NarInfo, keys []signature.SecretKey) error {
	if len(keys) == 0 {
		return nil
	}
	message := Fingerprint(info)
	ours := map[string]bool{}
	for _, key := range keys {
		ours[key.ToPublicKey().Name] = true
	}
	sigs := slices.DeleteFunc(slices.Clone(info.Signatures), func(s signature.Signature) bool {
		return ours[s.Name]
	})
	for _, key := range keys {
		sig, err := key.Sign(rand.Reader, message)
		if err != nil {
			return fmt.Errorf("signing %s: %w", info.StorePath, err)
		}
		sigs = append(sigs, sig)
	}
	info.Signatures = sigs
	return nil
}

// MaxSmallDocumentSize bounds the small documents of a binary cache that
// are read whole: nix-cache-info and realisations.
const MaxSmallDocumentSize = 1 << 20

// CacheInfoStoreDir returns the StoreDir of a nix-cache-info file, if it
// has one.
func CacheInfoStoreDir(data []byte) string {
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), "StoreDir:"); ok {
			return strings.TrimSpace(value)
		}
	}
	return ""
}
