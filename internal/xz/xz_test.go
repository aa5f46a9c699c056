package xz

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// xzCompress compresses data with the xz package's writer.
func xzCompress(t testing.TB, data []byte, cfg xz.WriterConfig) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := cfg.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testData is compressible but not trivial.
func testData(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"nix", "store", "narinfo", "caddy", "\n", "/nix/store/", "0123456789abcdfghijklmnpqrsvwxyz"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		if rng.IntN(10) == 0 {
			b.WriteByte(byte(rng.Uint32()))
		}
	}
	return b.Bytes()[:n]
}

func TestXzReaderDecodesWhatWritersWrite(t *testing.T) {
	data := testData(300 << 10)
	cases := map[string][]byte{
		"crc64, one block":   xzCompress(t, data, xz.WriterConfig{}),
		"crc32, many blocks": xzCompress(t, data, xz.WriterConfig{CheckSum: xz.CRC32, BlockSize: 50 << 10}),
		"sha256":             xzCompress(t, data, xz.WriterConfig{CheckSum: xz.SHA256}),
		"no check":           xzCompress(t, data, xz.WriterConfig{NoCheckSum: true}),
		"empty":              xzCompress(t, nil, xz.WriterConfig{}),
	}
	two := append(xzCompress(t, data[:1000], xz.WriterConfig{}), 0, 0, 0, 0)
	cases["two streams with padding"] = append(two, xzCompress(t, data[1000:], xz.WriterConfig{})...)
	want := map[string][]byte{"empty": {}}
	if xzTool, err := exec.LookPath("xz"); err == nil {
		for _, args := range [][]string{{"-6"}, {"-9", "--check=sha256"}, {"-1", "--block-size=65536", "--check=crc32"}} {
			cmd := exec.Command(xzTool, append(args, "-c")...)
			cmd.Stdin = bytes.NewReader(data)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("xz %v: %v", args, err)
			}
			cases["xz "+strings.Join(args, " ")] = out
		}
	} else {
		t.Log("xz (xz-utils) not found: checking only the xz package's output")
	}
	for name, compressed := range cases {
		t.Run(name, func(t *testing.T) {
			expect, ok := want[name]
			if !ok {
				expect = data
			}
			got, err := io.ReadAll(NewReader(bytes.NewReader(compressed), MaxDictSize))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, expect) {
				t.Fatalf("decoded %d bytes that differ from the %d written", len(got), len(expect))
			}
			// With dictionaries sized by the index, the same bytes.
			largest, err := LargestBlock(compressed)
			if name == "two streams with padding" {
				if err == nil {
					t.Fatalf("the index of the last of two streams was taken for the whole data's: %d", largest)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err = io.ReadAll(NewReaderOfBlocks(bytes.NewReader(compressed), MaxDictSize, largest))
			if err != nil {
				t.Fatalf("with dictionaries of at most %d bytes: %v", largest, err)
			}
			if !bytes.Equal(got, expect) {
				t.Fatalf("with dictionaries of at most %d bytes, decoded %d bytes that differ from the %d written", largest, len(got), len(expect))
			}
		})
	}
}

// TestSmallStreamsTakeSmallDictionaries decodes a small stream of the
// default preset (an 8 MiB dictionary) with its dictionary sized by its
// index: it allocates a fraction of what the preset asks for.
func TestSmallStreamsTakeSmallDictionaries(t *testing.T) {
	data := testData(20 << 10)
	compressed := xzCompress(t, data, xz.WriterConfig{})
	largest, err := LargestBlock(compressed)
	if err != nil || largest != int64(len(data)) {
		t.Fatalf("LargestBlock: %d, %v; want %d", largest, err, len(data))
	}
	allocated := func(r io.Reader) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	full := allocated(NewReader(bytes.NewReader(compressed), MaxDictSize))
	sized := allocated(NewReaderOfBlocks(bytes.NewReader(compressed), MaxDictSize, largest))
	t.Logf("decoding %d bytes allocated %d bytes with the preset's dictionary, %d with one sized by the index", len(data), full, sized)
	if full < 8<<20 || sized > 1<<20 {
		t.Fatalf("allocated %d bytes with the preset's dictionary and %d with the index's: want at least 8 MiB and at most 1 MiB", full, sized)
	}
}

// setDictProps rewrites the LZMA2 dictionary byte of the first block of a
// one-filter stream and fixes the block header's CRC32.
func setDictProps(t *testing.T, stream []byte, props byte) []byte {
	t.Helper()
	s := bytes.Clone(stream)
	headerSize := (int(s[12]) + 1) * 4
	header := s[12 : 12+headerSize]
	i := bytes.Index(header[2:], []byte{0x21, 0x01})
	if i < 0 {
		t.Fatal("no LZMA2 filter flags in the block header")
	}
	header[2+i+2] = props
	binary.LittleEndian.PutUint32(header[headerSize-4:], crc32.ChecksumIEEE(header[:headerSize-4]))
	return s
}

func TestXzReaderRefusesBadStreams(t *testing.T) {
	data := testData(100 << 10)
	good := xzCompress(t, data, xz.WriterConfig{})
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	for name, tc := range map[string]struct {
		stream []byte
		want   string
	}{
		"4 GiB dictionary":   {setDictProps(t, good, 40), "4095 MiB dictionary"},
		"128 MiB dictionary": {setDictProps(t, good, 30), "128 MiB dictionary; at most 64 MiB"},
		"invalid dictionary": {setDictProps(t, good, 41), "invalid LZMA2 dictionary"},
		"not xz":             {[]byte("hello, this is not xz at all"), "not xz data"},
		"truncated":          {good[:len(good)/2], "unexpected EOF"},
		"corrupt check":      {flip(len(good) - 12 - 12 - 2), "check mismatch"},
		"corrupt header CRC": {flip(9), "stream header: CRC32 mismatch"},
		"corrupt footer":     {flip(len(good) - 3), "footer"},
		"trailing garbage":   {append(bytes.Clone(good), "junk after the stream, not another one"...), "not xz data"},
		"lone padding byte":  {append(bytes.Clone(good), 0), "stream padding"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := io.ReadAll(NewReader(bytes.NewReader(tc.stream), MaxDictSize))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func FuzzXzReader(f *testing.F) {
	f.Add(xzCompress(f, testData(4000), xz.WriterConfig{}))
	f.Add(xzCompress(f, testData(4000), xz.WriterConfig{CheckSum: xz.CRC32, BlockSize: 1000}))
	f.Fuzz(func(t *testing.T, stream []byte) {
		ours, err := io.ReadAll(NewReader(bytes.NewReader(stream), 1<<20))
		if err != nil {
			return
		}
		// What this reader accepts, the xz package decodes the same way.
		r, err := xz.NewReader(bytes.NewReader(stream))
		if err != nil {
			t.Fatalf("accepted a stream the xz package refuses: %v", err)
		}
		theirs, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("accepted a stream the xz package refuses: %v", err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Fatalf("decoded %d bytes, the xz package %d different ones", len(ours), len(theirs))
		}
	})
}
