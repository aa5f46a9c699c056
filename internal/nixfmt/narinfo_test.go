package nixfmt

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// A narinfo as `nix copy --to file://` writes it, with its references out of
// order on purpose and a key Nix does not know.
const sampleNarinfo = `StorePath: /nix/store/wy01klyklshzl6crdbjgx2yyrwwv42sc-c
URL: nar/1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0.nar.xz
Compression: xz
FileHash: sha256:1a0jcm4a6p8gy3w1j0sj0q1jp7bxsbvmp6hlx3k1zx9gzds7nhh0
FileSize: 316
NarHash: sha256:0c0k4fb2dq8lcdi0b2jfjhsvprdkkavvcffy7mpwlacbg0bcwbrx
NarSize: 400
References: s1w4pv4wk26rnhszw001nryksx0g7fgy-b 2mq0d0irxq2fb3zqafd5gyphzy6zxjyw-a
Deriver: pk6x23rpy0sipmq8c177y3sn8dhbv9x2-c.drv
X-Unknown-Key: tolerated
`

func TestParseNarInfoToleratesUnknownKeys(t *testing.T) {
	info, err := ParseNarInfo([]byte(sampleNarinfo))
	if err != nil {
		t.Fatal(err)
	}
	if info.StorePath != "/nix/store/wy01klyklshzl6crdbjgx2yyrwwv42sc-c" || info.NarSize != 400 || len(info.References) != 2 {
		t.Fatalf("parsed %+v", info)
	}
}

func TestParseNarInfoRejects(t *testing.T) {
	tests := map[string]string{
		"empty":               "",
		"no final newline":    strings.TrimSuffix(sampleNarinfo, "\n"),
		"not key-value":       sampleNarinfo + "garbage\n",
		"blank line":          sampleNarinfo + "\n",
		"two References":      sampleNarinfo + "References: \n",
		"no NarHash":          strings.Replace(sampleNarinfo, "NarHash:", "X-NarHash:", 1),
		"zero NarSize":        strings.Replace(sampleNarinfo, "NarSize: 400", "NarSize: 0", 1),
		"no StorePath":        strings.Replace(sampleNarinfo, "StorePath:", "X-StorePath:", 1),
		"no URL":              strings.Replace(sampleNarinfo, "URL:", "X-URL:", 1),
		"bad NarHash":         strings.Replace(sampleNarinfo, "NarHash: sha256:0c0k", "NarHash: sha256:!!!!", 1),
		"md5 NarHash":         strings.Replace(sampleNarinfo, "NarHash: sha256:0c0k4fb2dq8lcdi0b2jfjhsvprdkkavvcffy7mpwlacbg0bcwbrx", "NarHash: md5:00000000000000000000000000000000", 1),
		"malformed signature": sampleNarinfo + "Sig: cache-1:notbase64\n",
		"CRLF line endings":   strings.ReplaceAll(sampleNarinfo, "\n", "\r\n"),
		"negative FileSize":   strings.Replace(sampleNarinfo, "FileSize: 316", "FileSize: -1", 1),
		"non-numeric NarSize": strings.Replace(sampleNarinfo, "NarSize: 400", "NarSize: many", 1),
		"two StorePath lines": sampleNarinfo + "StorePath: /nix/store/wy01klyklshzl6crdbjgx2yyrwwv42sc-c\n",
	}
	for name, text := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseNarInfo([]byte(text)); err == nil {
				t.Fatalf("ParseNarInfo accepted:\n%s", text)
			}
		})
	}
}

func TestFingerprintSortsReferences(t *testing.T) {
	info, err := ParseNarInfo([]byte(sampleNarinfo))
	if err != nil {
		t.Fatal(err)
	}
	want := "1;/nix/store/wy01klyklshzl6crdbjgx2yyrwwv42sc-c;sha256:0c0k4fb2dq8lcdi0b2jfjhsvprdkkavvcffy7mpwlacbg0bcwbrx;400;" +
		"/nix/store/2mq0d0irxq2fb3zqafd5gyphzy6zxjyw-a,/nix/store/s1w4pv4wk26rnhszw001nryksx0g7fgy-b"
	if got := Fingerprint(info); got != want {
		t.Fatalf("Fingerprint:\n got %s\nwant %s", got, want)
	}
	// The narinfo's own order is left alone.
	if info.References[0] != "s1w4pv4wk26rnhszw001nryksx0g7fgy-b" {
		t.Fatalf("Fingerprint reordered the narinfo's references: %v", info.References)
	}
}

func TestFingerprintNormalisesNarHashEncoding(t *testing.T) {
	// The same hash in base16: the Fingerprint must still use nix32.
	base16 := strings.Replace(sampleNarinfo,
		"NarHash: sha256:0c0k4fb2dq8lcdi0b2jfjhsvprdkkavvcffy7mpwlacbg0bcwbrx",
		"NarHash: sha256:"+hexOfNix32(t, "0c0k4fb2dq8lcdi0b2jfjhsvprdkkavvcffy7mpwlacbg0bcwbrx"), 1)
	a, err := ParseNarInfo([]byte(sampleNarinfo))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseNarInfo([]byte(base16))
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(a) != Fingerprint(b) {
		t.Fatalf("fingerprints differ:\n%s\n%s", Fingerprint(a), Fingerprint(b))
	}
}

func TestSignNarInfoKeepsOtherSignaturesWithoutDuplicates(t *testing.T) {
	ours, _, _ := signature.GenerateKeypair("cache-1", rand.Reader)
	second, _, _ := signature.GenerateKeypair("cache-2", rand.Reader)
	client, _, _ := signature.GenerateKeypair("client-1", rand.Reader)
	info, err := ParseNarInfo([]byte(sampleNarinfo))
	if err != nil {
		t.Fatal(err)
	}
	clientSig, _ := client.Sign(rand.Reader, Fingerprint(info))
	info.Signatures = append(info.Signatures, clientSig)

	for range 2 { // signing twice must not add a second signature per key
		if err := Sign(info, []signature.SecretKey{ours, second}); err != nil {
			t.Fatal(err)
		}
	}
	names := map[string]int{}
	for _, sig := range info.Signatures {
		names[sig.Name]++
	}
	if names["client-1"] != 1 || names["cache-1"] != 1 || names["cache-2"] != 1 || len(info.Signatures) != 3 {
		t.Fatalf("signatures after signing twice: %v", info.Signatures)
	}
	for _, key := range []signature.SecretKey{ours, second, client} {
		ok := false
		for _, sig := range info.Signatures {
			ok = ok || key.ToPublicKey().Verify(Fingerprint(info), sig)
		}
		if !ok {
			t.Errorf("no valid signature by %s", key.ToPublicKey().Name)
		}
	}
}

func TestNarInfoOutputAlwaysHasCompression(t *testing.T) {
	// Nix reads a missing Compression as bzip2, so the served narinfo says
	// so explicitly.
	text := strings.Replace(sampleNarinfo, "Compression: xz\n", "", 1)
	info, err := ParseNarInfo([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if out := info.String(); !strings.Contains(out, "\nCompression: bzip2\n") {
		t.Fatalf("served narinfo lacks Compression:\n%s", out)
	}
	info, _ = ParseNarInfo([]byte(sampleNarinfo))
	if out := info.String(); !strings.Contains(out, "\nCompression: xz\n") {
		t.Fatalf("served narinfo changed Compression:\n%s", out)
	}
}

func TestLoadSecretKey(t *testing.T) {
	dir := t.TempDir()
	secret, public, _ := signature.GenerateKeypair("cache.example.org-1", rand.Reader)
	path := filepath.Join(dir, "cache.sec")

	// With the trailing newline that key files usually have.
	if err := os.WriteFile(path, []byte(secret.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := LoadSecretKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if key.ToPublicKey().String() != public.String() {
		t.Fatalf("loaded key's public key %s, want %s", key.ToPublicKey(), public)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSecretKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: err = %v, want a refusal that says chmod 600", err)
	}

	bad := filepath.Join(dir, "bad.sec")
	if err := os.WriteFile(bad, []byte("no-colon-here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSecretKey(bad); err == nil {
		t.Fatal("a malformed key loaded")
	}
	if _, err := LoadSecretKey(filepath.Join(dir, "missing.sec")); err == nil {
		t.Fatal("a missing key loaded")
	}
}

func TestGenerateKeyPair(t *testing.T) {
	dir := t.TempDir()
	secretPath, publicPath := filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub")
	public, err := GenerateKeyPair("test-1", secretPath, publicPath)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(secretPath)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("secret key file mode: %v, %v", info, err)
	}
	secret, err := LoadSecretKey(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(publicPath)
	if strings.TrimSpace(string(data)) != public.String() || secret.ToPublicKey().String() != public.String() {
		t.Fatalf("public key file %q does not match the secret key", data)
	}
	if _, err := GenerateKeyPair("test-1", secretPath, publicPath); err == nil {
		t.Fatal("GenerateKeyPair overwrote an existing key")
	}
	if _, err := GenerateKeyPair("bad:name", filepath.Join(dir, "x"), filepath.Join(dir, "y")); err == nil {
		t.Fatal("a key name with a colon was accepted")
	}
}

func hexOfNix32(t *testing.T, nix32 string) string {
	t.Helper()
	h, err := nixhash.ParseAny("sha256:"+nix32, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h.Format(nixhash.Base16, false)
}
