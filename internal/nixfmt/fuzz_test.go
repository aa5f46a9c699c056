package nixfmt

import "testing"

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
