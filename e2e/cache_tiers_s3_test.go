package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
)

// refUploadToken is a static token of the ref tier: it has an overlay of
// its own, "ref_token 1".
const refUploadToken = "e2e-ref-token-0123456789abcdef"

// tieredS3Node is s3Node with a trusted and a ref-tier upload token.
func tieredS3Node(t *testing.T, server *harness.S3, secret string) *harness.Caddy {
	t.Helper()
	block := strings.TrimSuffix(server.StorageBlock("nix", "main/"), "}") + "\tgc_grace " + s3GCGrace.String() + "\n}"
	return harness.StartCaddy(t, harness.Caddyfile{Cache: &harness.CacheSite{
		Options: []string{"name main", block, "secret_key_file " + secret},
		Upload:  []string{"token " + uploadToken, "token " + refUploadToken + " ref"},
	}}.String(), harness.CaddyOptions{})
}

// bucketKeys lists the objects below main/ of the bucket nix, but for
// retention's own records.
func bucketKeys(t *testing.T, server *harness.S3) []string {
	t.Helper()
	var keys []string
	for obj := range server.Client().ListObjects(context.Background(), "nix", minio.ListObjectsOptions{Prefix: "main/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		if !strings.HasPrefix(obj.Key, "main/retention/") {
			keys = append(keys, obj.Key)
		}
	}
	return keys
}

// TestOverlaysOnS3Nodes: what a ref-tier token pushes through one node of
// an S3 cache lands in its overlay in the bucket, which the other node
// serves to that token alone, signed with the overlay key both derive;
// every URL shape that would reach elsewhere is refused; verify checks
// the overlay; a collection on the other node keeps the paths of the
// cache proper the overlay needs, and drops it whole once its ref pushed
// nothing for overlay_max_age.
func TestOverlaysOnS3Nodes(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	secret, public := keygen(t, "s3-tiers-1")
	a, b := tieredS3Node(t, server, secret), tieredS3Node(t, server, secret)
	nix := harness.NewNix(t, "").Client().Netrc(t, refUploadToken)
	closure := nix.BuildClosure("s3-tiers", 64<<10)
	if c := nix.Copy("--to", a.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
		t.Fatalf("nix copy with the ref token:\n%s", c)
	}
	keys := bucketKeys(t, server)
	for _, key := range keys {
		if !strings.HasPrefix(key, "main/overlays/") {
			t.Errorf("a ref token's push wrote %s, outside the overlays", key)
		}
	}
	if len(keys) < 2*len(closure.Paths) {
		t.Fatalf("the bucket holds %v, want the closure's narinfos and NARs in an overlay", keys)
	}

	hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
	narinfo := b.URL() + "/" + hash + ".narinfo"
	for who, headers := range map[string]map[string]string{
		"anonymous":         nil,
		"the trusted token": {"Authorization": "Bearer " + uploadToken},
	} {
		if resp := do(t, http.MethodGet, narinfo, headers); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s GET %s on the other node: %d, want 404", who, narinfo, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, narinfo, nil)
	req.SetBasicAuth("nix", refUploadToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Sig: s3-tiers-1-overlay:") || strings.Contains(string(body), "Sig: s3-tiers-1:") {
		t.Fatalf("the ref token GET %s on the other node: %d\n%s\nwant it signed with the overlay key alone", narinfo, resp.StatusCode, body)
	}

	// No URL shape takes a ref token's upload out of its overlay.
	for _, target := range []string{
		"/overlays/x/" + hash + ".narinfo", "/upload/../" + hash + ".narinfo", "/%2e%2e/" + hash + ".narinfo",
		"/nar/..%2f" + hash + ".narinfo", "/log/..%2f" + hash + ".narinfo", "/realisations/..%2f" + hash + ".narinfo",
	} {
		req, _ := http.NewRequest(http.MethodPut, a.URL()+target, bytes.NewReader(body))
		req.SetBasicAuth("nix", refUploadToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("PUT %s with the ref token: %d, want a 4xx", target, resp.StatusCode)
		}
	}
	if after := bucketKeys(t, server); strings.Join(after, "\n") != strings.Join(keys, "\n") {
		t.Errorf("refused uploads changed the bucket: %v, was %v", after, keys)
	}

	if report := verifyBucket(t, server, writePublicKey(t, public)); !strings.Contains(report, "narinfos checked") {
		t.Fatalf("verify: %s", report)
	}

	// A second closure whose leaf a trusted token pushed first: the ref
	// token's copy pushes the rest into its overlay, which then needs a
	// path of the cache proper.
	second := nix.BuildClosure("s3-tiers-needs", 0)
	leaf := ""
	for _, p := range second.Paths {
		if strings.HasSuffix(p, "-leaf") {
			leaf = p
		}
	}
	trusted := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	if c := trusted.Copy("--to", a.URL()+"/upload", leaf); c.Err != nil {
		t.Fatalf("nix copy of the leaf with the trusted token:\n%s", c)
	}
	if c := nix.Copy("--to", a.URL()+"/upload", second.Top); c.Err != nil {
		t.Fatalf("nix copy of the rest with the ref token:\n%s", c)
	}
	leafNarinfo := "main/" + strings.SplitN(filepath.Base(leaf), "-", 2)[0] + ".narinfo"

	// Every path of the cache proper is unused for long enough to go, but
	// the leaf is what a live overlay needs.
	time.Sleep(1100 * time.Millisecond)
	gc := adminPost(t, b, "/nix-cache/gc?cache=main&max_age=1s&min_age=0s&overlay_max_age=1h")
	if strings.Contains(gc, `"overlays_dropped"`) || !slices.Contains(bucketKeys(t, server), leafNarinfo) {
		t.Fatalf("a collection deleted what a live overlay needs, or the overlay: %s", gc)
	}
	// Idle for overlay_max_age: the overlay goes whole, and the leaf with it.
	gc = adminPost(t, b, "/nix-cache/gc?cache=main&max_age=1s&min_age=0s&overlay_max_age=1s")
	if !strings.Contains(gc, `"overlays_dropped"`) || !strings.Contains(gc, "ref_token 1") {
		t.Fatalf("a collection on the other node did not drop the idle overlay: %s", gc)
	}
	if left := bucketKeys(t, server); slices.ContainsFunc(left, func(k string) bool { return strings.HasSuffix(k, ".narinfo") }) {
		t.Fatalf("after the overlay was dropped and the leaf collected, the bucket holds %v", left)
	}
}
