// Package xz reads the .xz container around LZMA2 data with bounded
// memory: the dictionary a stream asks for is checked against a limit
// before anything is allocated, and every check the format has is made.
package xz

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"math"

	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/ulikunitz/xz/lzma"
)

// MaxDictSize bounds the LZMA2 dictionary an xz stream may ask for. The
// decoder allocates the whole dictionary up front, and the format allows
// 4 GiB, so without a bound one upload could make caddy allocate gigabytes.
// xz -9, the largest preset, uses 64 MiB; nix's default, -6, uses 8 MiB.
const MaxDictSize = 64 << 20

// The .xz container (https://tukaani.org/xz/xz-file-format.txt) around the
// LZMA2 data, which github.com/ulikunitz/xz/lzma decodes. The container is
// read here, rather than by the xz package's reader, to refuse a dictionary
// larger than MaxDictSize before it is allocated.
var (
	xzHeaderMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	xzFooterMagic = []byte{'Y', 'Z'}
	crc64Table    = crc64.MakeTable(crc64.ECMA)
)

const (
	xzFilterLZMA2 = 0x21
	xzCheckNone   = 0x00
	xzCheckCRC32  = 0x01
	xzCheckCRC64  = 0x04
	xzCheckSHA256 = 0x0a
)

// xzRecord is what the index says, and what was read, of one block.
type xzRecord struct{ unpadded, uncompressed uint64 }

// Reader decompresses a sequence of .xz streams, checking every header,
// block check and index, and refusing dictionaries over maxDict.
type Reader struct {
	in      *bufio.Reader
	maxDict int64
	// largestBlock, when not negative, is the most a block decompresses
	// to, which no dictionary needs to exceed.
	largestBlock int64
	err          error

	started   bool   // the first stream header has been read
	flags     []byte // the current stream's flags
	records   []xzRecord
	indexSize int64

	// The block being read.
	block        io.Reader
	blockCheck   hash.Hash
	blockHeader  int64
	compressed   *iox.CountingReader
	uncompressed uint64
	declared     struct {
		compressed, uncompressed int64 // -1 when the header does not say
	}
}

// NewReader returns a reader of the data in the .xz stream r, which refuses
// a stream whose LZMA2 dictionary exceeds maxDict bytes.
func NewReader(r io.Reader, maxDict int64) *Reader {
	return NewReaderOfBlocks(r, maxDict, -1)
}

// NewReaderOfBlocks is NewReader for a stream none of whose blocks
// decompresses to more than largestBlock bytes (as LargestBlock reads from
// its index): its dictionaries are no larger, where a small stream of
// nix's default preset would otherwise take 8 MiB. A block that turns out
// larger fails to decode. A negative largestBlock says nothing.
func NewReaderOfBlocks(r io.Reader, maxDict, largestBlock int64) *Reader {
	return &Reader{in: bufio.NewReaderSize(r, 64<<10), maxDict: maxDict, largestBlock: largestBlock}
}

// LargestBlock reads, from the index at the end of data, which must be one
// whole .xz stream, the most any of its blocks decompresses to. A block's
// dictionary never needs to be larger: LZMA2 refers back only to what the
// block has produced. The index is checked in full as the stream is read.
func LargestBlock(data []byte) (int64, error) {
	for len(data) >= 4 && bytes.Equal(data[len(data)-4:], []byte{0, 0, 0, 0}) {
		data = data[:len(data)-4] // stream padding
	}
	if len(data) < 12+12+8 {
		return 0, errors.New("too short for an xz stream")
	}
	footer := data[len(data)-12:]
	if !bytes.Equal(footer[10:], xzFooterMagic) {
		return 0, errors.New("xz stream footer: bad magic")
	}
	indexSize := (int64(binary.LittleEndian.Uint32(footer[4:8])) + 1) * 4
	indexStart := int64(len(data)) - 12 - indexSize
	if indexStart < 12 {
		return 0, errors.New("xz stream footer: index size out of range")
	}
	index := bytes.NewReader(data[indexStart : len(data)-12])
	if b, _ := index.ReadByte(); b != 0 {
		return 0, errors.New("xz index: bad indicator")
	}
	count, err := readXzVarint(index)
	if err != nil || count > uint64(indexSize) {
		return 0, errors.New("xz index: bad number of records")
	}
	var largest, blocks uint64
	for range count {
		unpadded, err := readXzVarint(index)
		if err != nil {
			return 0, fmt.Errorf("xz index: %w", err)
		}
		size, err := readXzVarint(index)
		if err != nil {
			return 0, fmt.Errorf("xz index: %w", err)
		}
		largest = max(largest, size)
		blocks += (unpadded + 3) &^ 3
	}
	// The blocks must fill the data between the stream header and the
	// index: data holding several streams is not described by this index
	// alone.
	if largest > math.MaxInt64 || blocks != uint64(indexStart-12) {
		return 0, errors.New("xz index: does not describe the whole data as one stream")
	}
	return int64(largest), nil
}

func (x *Reader) Read(p []byte) (int, error) {
	for x.err == nil {
		if x.block == nil {
			x.err = x.next()
			continue
		}
		n, err := x.block.Read(p)
		x.blockCheck.Write(p[:n])
		x.uncompressed += uint64(n)
		switch {
		case err == io.EOF:
			x.err = x.endBlock()
		case err != nil:
			x.err = fmt.Errorf("xz block: %w", noEOF(err))
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, x.err
}

// next reads up to the next block and starts it, or reports io.EOF at the
// end of the last stream.
func (x *Reader) next() error {
	if !x.started {
		x.started = true
		return x.streamHeader()
	}
	size, err := x.in.ReadByte()
	if err != nil {
		return fmt.Errorf("xz stream: %w", noEOF(err))
	}
	if size == 0 {
		if err := x.index(); err != nil {
			return err
		}
		if err := x.footer(); err != nil {
			return err
		}
		return x.streamPadding()
	}
	return x.startBlock(size)
}

func (x *Reader) streamHeader() error {
	var h [12]byte
	if _, err := io.ReadFull(x.in, h[:]); err != nil {
		return fmt.Errorf("xz stream header: %w", noEOF(err))
	}
	if !bytes.Equal(h[:6], xzHeaderMagic) {
		return errors.New("not xz data (no xz stream header)")
	}
	if binary.LittleEndian.Uint32(h[8:]) != crc32.ChecksumIEEE(h[6:8]) {
		return errors.New("xz stream header: CRC32 mismatch")
	}
	if h[6] != 0 || !validCheck(h[7]) {
		return fmt.Errorf("xz stream header: unsupported flags %#x %#x", h[6], h[7])
	}
	x.flags = append(x.flags[:0], h[6:8]...)
	x.records = x.records[:0]
	return nil
}

func validCheck(c byte) bool {
	switch c {
	case xzCheckNone, xzCheckCRC32, xzCheckCRC64, xzCheckSHA256:
		return true
	}
	return false
}

func (x *Reader) startBlock(sizeByte byte) error {
	headerSize := (int(sizeByte) + 1) * 4
	h := make([]byte, headerSize)
	h[0] = sizeByte
	if _, err := io.ReadFull(x.in, h[1:]); err != nil {
		return fmt.Errorf("xz block header: %w", noEOF(err))
	}
	if binary.LittleEndian.Uint32(h[headerSize-4:]) != crc32.ChecksumIEEE(h[:headerSize-4]) {
		return errors.New("xz block header: CRC32 mismatch")
	}
	flags := h[1]
	if flags&0x3c != 0 {
		return fmt.Errorf("xz block header: reserved flags %#x set", flags)
	}
	fields := bytes.NewReader(h[2 : headerSize-4])
	x.declared.compressed, x.declared.uncompressed = -1, -1
	if flags&0x40 != 0 {
		v, err := readXzVarint(fields)
		if err != nil || v == 0 {
			return errors.New("xz block header: bad compressed size")
		}
		x.declared.compressed = int64(v)
	}
	if flags&0x80 != 0 {
		v, err := readXzVarint(fields)
		if err != nil {
			return errors.New("xz block header: bad uncompressed size")
		}
		x.declared.uncompressed = int64(v)
	}
	if filters := flags&0x03 + 1; filters != 1 {
		return fmt.Errorf("xz block uses %d filters; only LZMA2 alone, as nix writes, is accepted", filters)
	}
	id, err1 := readXzVarint(fields)
	propsSize, err2 := readXzVarint(fields)
	if err1 != nil || err2 != nil || id != xzFilterLZMA2 || propsSize != 1 {
		return fmt.Errorf("xz block uses filter %#x; only LZMA2 (0x21), as nix writes, is accepted", id)
	}
	props, err := fields.ReadByte()
	if err != nil {
		return errors.New("xz block header: LZMA2 properties missing")
	}
	dict, err := lzma2DictSize(props)
	if err != nil {
		return err
	}
	if dict > x.maxDict {
		return fmt.Errorf("xz block asks for a %d MiB dictionary; at most %d MiB (xz -9) is accepted", dict>>20, x.maxDict>>20)
	}
	for fields.Len() > 0 {
		if b, _ := fields.ReadByte(); b != 0 {
			return errors.New("xz block header: non-zero padding")
		}
	}

	x.compressed = &iox.CountingReader{R: x.in}
	var data io.Reader = x.compressed
	if x.declared.compressed >= 0 {
		data = io.LimitReader(x.compressed, x.declared.compressed)
	}
	// The dictionary holds at most what the block decompresses to.
	if x.largestBlock >= 0 {
		dict = min(dict, x.largestBlock)
	}
	if x.declared.uncompressed >= 0 {
		dict = min(dict, x.declared.uncompressed)
	}
	block, err := lzma.Reader2Config{DictCap: int(max(dict, lzma.MinDictCap))}.NewReader2(data)
	if err != nil {
		return fmt.Errorf("xz block: %w", noEOF(err))
	}
	x.block, x.blockHeader, x.uncompressed = block, int64(headerSize), 0
	x.blockCheck = newXzCheck(x.flags[1])
	return nil
}

// lzma2DictSize decodes the dictionary size of LZMA2's properties byte.
func lzma2DictSize(props byte) (int64, error) {
	switch {
	case props > 40:
		return 0, fmt.Errorf("xz block: invalid LZMA2 dictionary size %#x", props)
	case props == 40:
		return 1<<32 - 1, nil
	}
	return int64(2|props&1) << (props/2 + 11), nil
}

func (x *Reader) endBlock() error {
	compressed := x.compressed.N
	if x.declared.compressed >= 0 && compressed != x.declared.compressed {
		return fmt.Errorf("xz block: %d compressed bytes, header says %d", compressed, x.declared.compressed)
	}
	if x.declared.uncompressed >= 0 && int64(x.uncompressed) != x.declared.uncompressed {
		return fmt.Errorf("xz block: %d bytes decompressed, header says %d", x.uncompressed, x.declared.uncompressed)
	}
	if err := x.skipPadding(x.blockHeader + compressed); err != nil {
		return err
	}
	want := x.blockCheck.Sum(nil)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(x.in, got); err != nil {
		return fmt.Errorf("xz block check: %w", noEOF(err))
	}
	if !bytes.Equal(got, want) {
		return errors.New("xz block: check mismatch; the data is corrupt")
	}
	x.records = append(x.records, xzRecord{
		unpadded:     uint64(x.blockHeader + compressed + int64(len(want))),
		uncompressed: x.uncompressed,
	})
	x.block = nil
	return nil
}

// skipPadding reads the zero bytes that bring n up to a multiple of four.
func (x *Reader) skipPadding(n int64) error {
	for ; n%4 != 0; n++ {
		b, err := x.in.ReadByte()
		if err != nil {
			return fmt.Errorf("xz padding: %w", noEOF(err))
		}
		if b != 0 {
			return errors.New("xz: non-zero padding")
		}
	}
	return nil
}

// index reads the index, whose indicator byte has been read, and compares
// it with the blocks read.
func (x *Reader) index() error {
	crc := crc32.NewIEEE()
	crc.Write([]byte{0})
	in := &iox.CountingReader{R: io.TeeReader(x.in, crc)}
	count, err := readXzVarint(in)
	if err != nil {
		return fmt.Errorf("xz index: %w", noEOF(err))
	}
	if count != uint64(len(x.records)) {
		return fmt.Errorf("xz index lists %d blocks, the stream has %d", count, len(x.records))
	}
	for _, rec := range x.records {
		unpadded, err1 := readXzVarint(in)
		uncompressed, err2 := readXzVarint(in)
		if err1 != nil || err2 != nil {
			return errors.New("xz index: truncated record")
		}
		if unpadded != rec.unpadded || uncompressed != rec.uncompressed {
			return errors.New("xz index does not match the blocks")
		}
	}
	for n := 1 + in.N; n%4 != 0; n++ {
		var b [1]byte
		if _, err := io.ReadFull(in, b[:]); err != nil || b[0] != 0 {
			return errors.New("xz index: bad padding")
		}
	}
	x.indexSize = 1 + in.N
	var sum [4]byte
	if _, err := io.ReadFull(x.in, sum[:]); err != nil {
		return fmt.Errorf("xz index: %w", noEOF(err))
	}
	if binary.LittleEndian.Uint32(sum[:]) != crc.Sum32() {
		return errors.New("xz index: CRC32 mismatch")
	}
	x.indexSize += 4
	return nil
}

func (x *Reader) footer() error {
	var f [12]byte
	if _, err := io.ReadFull(x.in, f[:]); err != nil {
		return fmt.Errorf("xz stream footer: %w", noEOF(err))
	}
	switch {
	case !bytes.Equal(f[10:], xzFooterMagic):
		return errors.New("xz stream footer: bad magic")
	case binary.LittleEndian.Uint32(f[:4]) != crc32.ChecksumIEEE(f[4:10]):
		return errors.New("xz stream footer: CRC32 mismatch")
	case !bytes.Equal(f[8:10], x.flags):
		return errors.New("xz stream footer: flags differ from the header's")
	case (int64(binary.LittleEndian.Uint32(f[4:8]))+1)*4 != x.indexSize:
		return errors.New("xz stream footer: wrong index size")
	}
	return nil
}

// streamPadding skips null bytes after a stream and starts the next stream,
// if any.
func (x *Reader) streamPadding() error {
	for {
		b, err := x.in.Peek(1)
		if err == io.EOF {
			return io.EOF
		}
		if err != nil {
			return err
		}
		if b[0] != 0 {
			return x.streamHeader()
		}
		var pad [4]byte
		if _, err := io.ReadFull(x.in, pad[:]); err != nil || pad != [4]byte{} {
			return errors.New("xz: bad stream padding")
		}
	}
}

func newXzCheck(kind byte) hash.Hash {
	switch kind {
	case xzCheckCRC32:
		return crc32LE{crc32.NewIEEE()}
	case xzCheckCRC64:
		return crc64LE{crc64.New(crc64Table)}
	case xzCheckSHA256:
		return sha256.New()
	}
	return noCheck{}
}

// crc32LE and crc64LE sum in little-endian order, as .xz stores checks.
type crc32LE struct{ hash.Hash32 }

func (c crc32LE) Sum(b []byte) []byte { return binary.LittleEndian.AppendUint32(b, c.Sum32()) }

type crc64LE struct{ hash.Hash64 }

func (c crc64LE) Sum(b []byte) []byte { return binary.LittleEndian.AppendUint64(b, c.Sum64()) }

type noCheck struct{}

func (noCheck) Write(p []byte) (int, error) { return len(p), nil }
func (noCheck) Sum(b []byte) []byte         { return b }
func (noCheck) Reset()                      {}
func (noCheck) Size() int                   { return 0 }
func (noCheck) BlockSize() int              { return 1 }

// readXzVarint reads one of the container's multibyte integers.
func readXzVarint(r io.Reader) (uint64, error) {
	var v uint64
	var b [1]byte
	for i := 0; i < 9; i++ {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		v |= uint64(b[0]&0x7f) << (7 * i)
		if b[0]&0x80 == 0 {
			if b[0] == 0 && i > 0 {
				return 0, errors.New("xz: integer is not in its shortest form")
			}
			return v, nil
		}
	}
	return 0, errors.New("xz: integer is too long")
}

// noEOF turns an end of input inside the format into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
