package caddynix

import (
	"compress/bzip2"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// narCompressions maps a narinfo's Compression to the NAR file extension
// Nix gives it. These are the compressions this cache can check on upload.
var narCompressions = map[string]string{
	"none":  ".nar",
	"xz":    ".nar.xz",
	"zstd":  ".nar.zst",
	"bzip2": ".nar.bz2",
}

// compressionOfExt is the inverse of narCompressions, keyed by the
// extension after ".nar" ("" for an uncompressed NAR).
var compressionOfExt = map[string]string{
	"":     "none",
	".xz":  "xz",
	".zst": "zstd",
	".bz2": "bzip2",
}

// narCompression is the compression of a NAR named nar/<52-char hash>.nar[.ext],
// as the NAR URL shapes in urls.go allow.
func narCompression(narPath string) (string, bool) {
	compression, ok := compressionOfExt[strings.TrimPrefix(path.Base(narPath)[52:], ".nar")]
	return compression, ok
}

// decompressor returns a reader of r's decompressed content for a NAR
// compression, and a function that releases its resources.
func decompressor(compression string, r io.Reader) (io.Reader, func(), error) {
	switch compression {
	case "none":
		return r, func() {}, nil
	case "xz":
		return newXzReader(r, maxXzDictSize), func() {}, nil
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
	}
	return nil, nil, fmt.Errorf("compression %q is not supported by this cache (use none, xz, zstd or bzip2)", compression)
}

// contentDecoder undoes a request's Content-Encoding, which newer Nix sets
// on compressed narinfo, listing and log uploads.
func contentDecoder(encoding string, r io.Reader) (io.Reader, func(), error) {
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
		return decompressor(encoding, r)
	}
	return nil, nil, fmt.Errorf("Content-Encoding %q is not supported (use gzip, br, zstd, xz or bzip2)", encoding)
}
