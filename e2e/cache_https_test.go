package e2e

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestNARsFillTLSRecordsOverHTTP2 downloads a NAR from the caddy binary
// over TLS and HTTP/2, as Nix's curl does, through a proxy that keeps what
// caddy sent, and reads the sizes of its TLS records: under Caddy's write
// idle timeout too, each DATA frame fills one record, where a frame of
// the 16 KiB curl allows would go out as a full record and one of 9 bytes.
func TestNARsFillTLSRecordsOverHTTP2(t *testing.T) {
	nix := harness.NewNix(t, "")
	closure := nix.BuildClosure("records", 4<<20)
	root := filepath.Join(t.TempDir(), "cache")
	if c := nix.Copy("--to", "file://"+root+"?compression=none", closure.Top); c.Err != nil {
		t.Fatalf("filling the cache:\n%s", c)
	}
	nar, whole := largestNar(t, root, 4<<20)
	cert, key, pool := harness.SelfSignedCert(t)
	secret, _ := keygen(t, "records-1")
	caddy := harness.StartCaddy(t, harness.Caddyfile{
		Global: []string{"auto_https off"},
		Sites: []string{fmt.Sprintf("https://127.0.0.1:{$CADDY_HTTPS_PORT} {\n\tbind 127.0.0.1\n\ttls %s %s\n\tnix_cache {\n\t\troot %s\n\t\tsecret_key_file %s\n\t}\n}",
			cert, key, root, secret)},
	}.String(), harness.CaddyOptions{NoHTTP: true})
	proxy := harness.StartFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", caddy.HTTPSPort))
	proxy.Record()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := client.Get("https://" + proxy.Addr + "/nar/" + filepath.Base(nar))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || !bytes.Equal(got, whole) {
		t.Fatalf("over %s: %s, %d of %d bytes, equal %v, %v", resp.Proto, resp.Status, len(got), len(whole), bytes.Equal(got, whole), err)
	}
	if err := harness.CheckFullTLSRecords(proxy.Sent(), len(whole)); err != nil {
		t.Fatal(err)
	}
}
