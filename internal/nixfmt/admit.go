package nixfmt

import (
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"
)

// MaxNarInfoSize bounds a narinfo. Real ones are a few kilobytes even with
// thousands of references.
const MaxNarInfoSize = 1 << 20

// narURL is the shape of a NAR's URL in a binary cache:
// nar/<nix32 sha256 of the file>.nar[.ext].
var narURL = regexp.MustCompile(`^nar/[0-9a-df-np-sv-z]{52}\.nar(\.[a-z0-9]+)?$`)

// AdmitError is a narinfo refused by Admit: Reason is a short label (for
// metrics), Error says what is wrong.
type AdmitError struct {
	Reason string
	msg    string
}

func (e *AdmitError) Error() string { return e.msg }

func refuse(reason, format string, args ...any) *AdmitError {
	return &AdmitError{Reason: reason, msg: fmt.Sprintf(format, args...)}
}

// CheckPath checks what a narinfo says of its path, wherever the narinfo
// comes from (the cache, a live store, an upstream): a store path in
// storeDir whose hash part is hash, a deriver and references that are
// store path names, and a CA as Nix parses it. It is Admit's rule for
// those fields, and its errors are *AdmitError.
func CheckPath(info *narinfo.NarInfo, storeDir, hash string) error {
	dir, base := path.Split(info.StorePath)
	if dir != storeDir+"/" {
		return refuse("bad_store_path", "StorePath %s is not in %s", info.StorePath, storeDir)
	}
	if _, err := storepath.FromString(base); err != nil {
		return refuse("bad_store_path", "StorePath %s: %v", info.StorePath, err)
	}
	if !strings.HasPrefix(base, hash+"-") {
		return refuse("store_path_mismatch", "StorePath %s does not have the hash %s", info.StorePath, hash)
	}
	if info.Deriver != "" {
		if _, err := storepath.FromString(info.Deriver); err != nil {
			return refuse("bad_narinfo", "Deriver %q is not a store path name: %v", info.Deriver, err)
		}
	}
	for _, ref := range info.References {
		if _, err := storepath.FromString(ref); err != nil {
			return refuse("bad_narinfo", "reference %q is not a store path name: %v", ref, err)
		}
	}
	if info.CA != "" {
		if err := CheckContentAddress(info.CA); err != nil {
			return refuse("bad_narinfo", "CA %q: %v", info.CA, err)
		}
	}
	return nil
}

// Admit is the one rule for what a cache holds as the narinfo of the store
// path whose hash part is hash, in the store storeDir: upload stores only
// what it admits, serving answers only what it admits, and verify reports
// whatever it does not. It parses data with Nix's rules and checks what
// can be checked without the cache's files: the size, the store path and
// its hash, the deriver and references, a NAR URL of the cache's shape
// whose extension matches a Compression the cache can read, and a sha256
// FileHash with a FileSize.
func Admit(data []byte, storeDir, hash string) (*narinfo.NarInfo, error) {
	if len(data) > MaxNarInfoSize {
		return nil, refuse("too_large", "narinfo of %d bytes is larger than %d bytes", len(data), MaxNarInfoSize)
	}
	info, err := ParseNarInfo(data)
	if err != nil {
		return nil, refuse("bad_narinfo", "%v", err)
	}
	if err := CheckPath(info, storeDir, hash); err != nil {
		return nil, err
	}
	if !narURL.MatchString(info.URL) {
		return nil, refuse("bad_url", "URL %q is not a NAR of this cache (nar/<filehash>.nar[.xz|.zst|.bz2|.br])", info.URL)
	}
	if _, supported := NarCompressions[info.Compression]; !supported {
		return nil, refuse("bad_compression", "Compression %q is not one this cache reads (none, xz, zstd, bzip2 or br)", info.Compression)
	}
	if compression, _ := NarCompression(info.URL); compression != info.Compression {
		return nil, refuse("bad_compression", "URL %s does not end in %s as Compression %s requires", info.URL, NarCompressions[info.Compression], info.Compression)
	}
	if info.FileHash == nil || info.FileHash.Algo() != nixhash.SHA256 || info.FileSize == 0 {
		return nil, refuse("bad_narinfo", "narinfo needs a sha256 FileHash and a FileSize")
	}
	return info, nil
}
