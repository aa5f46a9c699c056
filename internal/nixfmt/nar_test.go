package nixfmt

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// narBuilder writes NAR tokens by hand, so that tests can make NARs no
// writer would.
type narBuilder struct{ bytes.Buffer }

func (b *narBuilder) str(tokens ...string) *narBuilder {
	for _, s := range tokens {
		_ = binary.Write(&b.Buffer, binary.LittleEndian, uint64(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	return b
}

func file(contents string) []string {
	return []string{"(", "type", "regular", "contents", contents, ")"}
}

func dir(entries ...[]string) []string {
	out := []string{"(", "type", "directory"}
	for _, e := range entries {
		out = append(out, e...)
	}
	return append(out, ")")
}

func entry(name string, node []string) []string {
	return append(append([]string{"entry", "(", "name", name, "node"}, node...), ")")
}

func nar(node []string) []byte {
	b := new(narBuilder)
	b.str("nix-archive-1")
	b.str(node...)
	return b.Bytes()
}

func TestCheckNarAcceptsWhatNixWrites(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty file":      nar(file("")),
		"file":            nar(file("hello")),
		"executable":      nar([]string{"(", "type", "regular", "executable", "", "contents", "#!/bin/sh\n", ")"}),
		"symlink":         nar([]string{"(", "type", "symlink", "target", "../lib/x", ")"}),
		"empty directory": nar(dir()),
		"entry named )":   nar(dir(entry(")", file("")))),
		"tree": nar(dir(
			entry("a", file("1")),
			entry("b", dir(entry("c", []string{"(", "type", "symlink", "target", "/a", ")"}))),
			entry("b.d", file("")),
		)),
	} {
		if err := CheckNar(bytes.NewReader(data)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestCheckNarRefuses(t *testing.T) {
	whole := nar(dir(entry("a", file("abc"))))
	badPadding := bytes.Clone(whole)
	badPadding[bytes.Index(badPadding, []byte("abc"))+3] = 1
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty":              {nil, "not a NAR"},
		"other magic":        {new(narBuilder).str("nix-archive-2").Bytes(), "not a NAR"},
		"magic only":         {new(narBuilder).str("nix-archive-1").Bytes(), "cut short"},
		"cut at a token":     {whole[:len(whole)-16], "cut short"},
		"cut in a token":     {whole[:len(whole)-3], "cut short"},
		"cut in contents":    {whole[:bytes.Index(whole, []byte("abc"))+2], "cut short"},
		"trailing byte":      {append(bytes.Clone(whole), 0), "follows the end"},
		"non-zero padding":   {badPadding, "padding"},
		"unknown type":       {nar([]string{"(", "type", "fifo", ")"}), "unknown file type"},
		"name dot":           {nar(dir(entry(".", file("")))), "invalid entry name"},
		"name dot dot":       {nar(dir(entry("..", file("")))), "invalid entry name"},
		"empty name":         {nar(dir(entry("", file("")))), "invalid entry name"},
		"name with slash":    {nar(dir(entry("a/b", file("")))), "invalid entry name"},
		"name with NUL":      {nar(dir(entry("a\x00", file("")))), "invalid entry name"},
		"unsorted":           {nar(dir(entry("b", file("")), entry("a", file("")))), "sorted"},
		"duplicate":          {nar(dir(entry("a", file("")), entry("a", file("")))), "sorted"},
		"name too long":      {nar(dir(entry(strings.Repeat("n", 256), file("")))), "at most 255"},
		"empty target":       {nar([]string{"(", "type", "symlink", "target", "", ")"}), "symlink target"},
		"missing contents":   {nar([]string{"(", "type", "regular", ")"}), "contents"},
		"executable garbage": {nar([]string{"(", "type", "regular", "executable", "yes", "contents", "", ")"}), "expected"},
		"huge length": {func() []byte {
			b := new(narBuilder).str("nix-archive-1", "(", "type", "regular", "contents")
			_ = binary.Write(&b.Buffer, binary.LittleEndian, uint64(1)<<63)
			return b.Bytes()
		}(), "impossible"},
	} {
		t.Run(name, func(t *testing.T) {
			err := CheckNar(bytes.NewReader(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckNar: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
