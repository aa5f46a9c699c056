package nixfmt

import (
	"bytes"
	"errors"
	"io"
	"testing"

	gonar "github.com/nix-community/go-nix/pkg/nar"
)

// FuzzParseNarInfo: parsing arbitrary input never panics, and whatever
// parses can be fingerprinted and printed as a narinfo that parses again.
func FuzzParseNarInfo(f *testing.F) {
	f.Add([]byte(sampleNarinfo))
	f.Add([]byte("StorePath: /nix/store/x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseNarInfo(data)
		if err != nil {
			return
		}
		_ = Fingerprint(info)
		if _, err := ParseNarInfo([]byte(info.String())); err != nil {
			t.Fatalf("printed narinfo does not parse: %v\n%s", err, info.String())
		}
	})
}

// FuzzCheckNar: checking arbitrary input never panics, and a NAR it
// accepts is one that go-nix reads whole and writes back byte for byte:
// NAR is canonical, so what Nix would unpack has exactly one encoding.
func FuzzCheckNar(f *testing.F) {
	f.Add(nar(file("hello")))
	f.Add(nar([]string{"(", "type", "regular", "executable", "", "contents", "#!/bin/sh\n", ")"}))
	f.Add(nar(dir(
		entry("a", file("1")),
		entry("b", dir(entry("c", []string{"(", "type", "symlink", "target", "/a", ")"}))),
	)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if CheckNar(bytes.NewReader(data)) != nil {
			return
		}
		reader, err := gonar.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("accepted a NAR go-nix cannot open: %v", err)
		}
		var again bytes.Buffer
		writer, err := gonar.NewWriter(&again)
		if err != nil {
			t.Fatal(err)
		}
		for {
			header, err := reader.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("accepted a NAR go-nix cannot read: %v", err)
			}
			if err := writer.WriteHeader(header); err != nil {
				t.Fatalf("accepted a NAR go-nix cannot write again: %v", err)
			}
			if _, err := io.Copy(writer, reader); err != nil {
				t.Fatalf("accepted a NAR whose contents go-nix cannot copy: %v", err)
			}
		}
		if err := writer.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Bytes(), data) {
			t.Fatalf("accepted a NAR of %d bytes that go-nix writes back as %d other bytes", len(data), again.Len())
		}
	})
}
