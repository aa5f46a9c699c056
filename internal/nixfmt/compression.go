package nixfmt

import (
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/cargoxx-pkgs/runner/internal/xz"
	"github.com/klauspost/compress/zstd"
)

// NarCompressions maps a narinfo's Compression to the NAR file extension
// Nix gives it. These are the compressions this cache can check on upload.
var NarCompressions = map[string]string{
	"none":  ".nar",
	"xz":    ".nar.xz",
	"zstd":  ".nar.zst",
	"bzip2": ".nar.bz2",
	"br":    ".nar.br",
}

// compressionOfExt is the inverse of NarCompressions, keyed by the
// extension after ".nar" ("" for an uncompressed NAR).
var compressionOfExt = map[string]string{
	"":     "none",
	".xz":  "xz",
	".zst": "zstd",
	".bz2": "bzip2",
	".br":  "br",
}

// NarCompression is the compression of a NAR named <file hash>.nar[.ext],
// by its extension.
func NarCompression(narPath string) (string, bool) {
	_, ext, ok := strings.Cut(path.Base(narPath), ".nar")
	if !ok {
		return "", false
	}
	compression, ok := compressionOfExt[ext]
	return compression, ok
}

// Decompressor returns a reader of r's decompressed content for a NAR
// compression, and a function that releases its resources.
func Decompressor(compression string, r io.Reader) (io.Reader, func(), error) {
	return DecompressorOfBlocks(compression, r, -1)
}

// DecompressorOfBlocks is Decompressor for content whose xz blocks
// decompress to at most largestBlock bytes each (xz.LargestBlock), so that
// their dictionaries are no larger; a negative largestBlock says nothing.
func DecompressorOfBlocks(compression string, r io.Reader, largestBlock int64) (io.Reader, func(), error) {
	switch compression {
	case "none":
		return r, func() {}, nil
	case "xz":
		return xz.NewReaderOfBlocks(r, xz.MaxDictSize, largestBlock), func() {}, nil
	case "zstd":
		// One goroutine and a bounded window keep memory flat whatever the
		// NAR's size.
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, nil, fmt.Errorf("reading zstd data: %w", err)
		}
		return zr, zr.Close, nil
	case "bzip2":
		return bzip2.NewReader(r), func() {}, nil
	case "br":
		return brotli.NewReader(r), func() {}, nil
	}
	return nil, nil, fmt.Errorf("compression %q is not supported by this cache (use none, xz, zstd, bzip2 or br)", compression)
}

// ContentDecoder undoes a request's Content-Encoding, which newer Nix sets
// on compressed narinfo, listing and log uploads.
func ContentDecoder(encoding string, r io.Reader) (io.Reader, func(), error) {
	switch encoding {
	case "", "identity", "none":
		return r, func() {}, nil
	case "gzip", "x-gzip":
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, fmt.Errorf("reading gzip body: %w", err)
		}
		return gr, func() { _ = gr.Close() }, nil
	case "br":
		// Nix 2.34 sends listings, logs and narinfo with Content-Encoding
		// br when ls-, log- or narinfo-compression asks for brotli, as
		// cache.nixos.org stores them.
		return brotli.NewReader(r), func() {}, nil
	case "zstd", "xz", "bzip2", "bzip":
		if encoding == "bzip" {
			encoding = "bzip2"
		}
		return Decompressor(encoding, r)
	}
	return nil, nil, fmt.Errorf("Content-Encoding %q is not supported (use gzip, br, zstd, xz or bzip2)", encoding)
}
