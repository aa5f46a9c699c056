package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
)

// s3Node is a caddy serving, signing and taking uploads for the cache in
// bucket nix, below main/, of server.
func s3Node(t *testing.T, server *harness.S3, secret string, storageOptions ...string) *harness.Caddy {
	t.Helper()
	block := server.StorageBlock("nix", "main/")
	if len(storageOptions) > 0 {
		block = strings.TrimSuffix(block, "}") + "\t" + strings.Join(storageOptions, "\n\t") + "\n}"
	}
	return harness.StartCaddy(t, harness.Caddyfile{Cache: &harness.CacheSite{
		Options: []string{"name main", block, "secret_key_file " + secret},
		Upload:  []string{"token " + uploadToken},
	}}.String(), harness.CaddyOptions{})
}

// verifyBucket runs `caddy nix-cache verify --s3` on the bucket and fails
// the test unless it is clean; it returns the report.
func verifyBucket(t *testing.T, server *harness.S3, publicKeyFile string) string {
	t.Helper()
	env := append(os.Environ(), "AWS_ACCESS_KEY_ID="+server.AccessKey, "AWS_SECRET_ACCESS_KEY="+server.SecretKey)
	c := harness.Run(env, "", harness.CaddyBinary(t, "caddy"), "nix-cache", "verify",
		"--s3", "s3://nix/main/?endpoint="+server.Endpoint+"&addressing-style=path", "--public-key", publicKeyFile, "--nar-hash")
	if c.Err != nil || !strings.Contains(c.Stdout, " 0 problems") {
		t.Fatalf("caddy nix-cache verify --s3 is not clean:\n%s", c)
	}
	return c.Stdout
}

// TestNodesShareABucket runs two caddy processes on one bucket: what is
// uploaded through one is substituted through the other, trusting only
// the cache's key; overlapping closures uploaded through both at once
// leave a clean cache in the layout of `nix copy --to s3://`.
func TestNodesShareABucket(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		server := harness.StartS3(t)
		server.CreateBucket("nix")
		secret, public := keygen(t, "s3-1")
		publicFile := writePublicKey(t, public)
		a, b := s3Node(t, server, secret), s3Node(t, server, secret)
		nix := client.Netrc(t, uploadToken)

		closure := nix.BuildClosure("s3-one", 1<<20)
		if c := nix.Copy("--to", a.URL()+"/upload?compression=zstd", closure.Top); c.Err != nil {
			t.Fatalf("nix copy --to A:\n%s", c)
		}
		c, store := substitute(nix, b.URL(), public, closure.Top)
		if c.Err != nil {
			t.Fatalf("substituting from B what was uploaded through A:\n%s", c)
		}
		if got := nix.StorePaths(store); !slices.Equal(got, closure.Paths) {
			t.Fatalf("the store holds %v, want %v", got, closure.Paths)
		}

		// Overlapping closures through both nodes at once.
		x, y := nix.BuildClosure("s3-x", 256<<10), nix.BuildClosure("s3-y", 256<<10)
		targets := []string{x.Top, middleOf(t, x), y.Top, middleOf(t, y)}
		var wg sync.WaitGroup
		results := make([]harness.Command, 8)
		for i := range results {
			node := []*harness.Caddy{a, b}[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = nix.WithFreshCache().Copy("--to", node.URL()+"/upload?compression=zstd", targets[i%len(targets)])
			}()
		}
		wg.Wait()
		for i, c := range results {
			if c.Err != nil {
				t.Errorf("concurrent nix copy %d failed:\n%s", i, c)
			}
		}
		for _, closure := range []harness.Closure{x, y} {
			for _, node := range []*harness.Caddy{a, b} {
				if c, _ := substitute(nix, node.URL(), public, closure.Top); c.Err != nil {
					t.Fatalf("substituting %s from %s:\n%s", closure.Top, node.URL(), c)
				}
			}
		}
		verifyBucket(t, server, publicFile)

		// The bucket has the layout nix copy --to s3:// writes, below the
		// prefix.
		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		for _, key := range []string{"main/nix-cache-info", "main/" + hash + ".narinfo"} {
			if _, err := server.Client().StatObject(context.Background(), "nix", key, minio.StatObjectOptions{}); err != nil {
				t.Errorf("the bucket has no %s: %v", key, err)
			}
		}
	})
}

// TestKilledNodeLeavesNoUpload kills a node in the middle of a 256 MiB
// upload: the other node never serves the path, the cache stays clean,
// the retried copy succeeds, and once the killed node starts again the
// unfinished upload's parts are gone.
func TestKilledNodeLeavesNoUpload(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	secret, public := keygen(t, "s3-kill-1")
	publicFile := writePublicKey(t, public)
	a := s3Node(t, server, secret, "abandon_uploads_after 1s")
	b := s3Node(t, server, secret)
	nix := harness.NewNix(t, "").Client().Netrc(t, uploadToken)
	closure := nix.BuildClosure("s3-kill", 256<<20)
	hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]

	copyDone := make(chan harness.Command, 1)
	go func() {
		copyDone <- nix.WithFreshCache().Copy("--to", a.URL()+"/upload?compression=none", closure.Top)
	}()
	// Kill A once parts of the big NAR are on the server.
	err := harness.Eventually(2*time.Minute, 50*time.Millisecond, func() error {
		if n := unfinishedUploads(t, server); n == 0 {
			return fmt.Errorf("no upload in progress yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a.Kill()
	if c := <-copyDone; c.Err == nil {
		t.Fatalf("nix copy succeeded although its server was killed:\n%s", c)
	}
	if resp := do(t, "GET", b.URL()+"/"+hash+".narinfo", nil); resp.StatusCode != 404 {
		t.Fatalf("B answers %d for the narinfo of an upload that never finished", resp.StatusCode)
	}
	verifyBucket(t, server, publicFile)

	a.Start()
	if c := nix.WithFreshCache().Copy("--to", a.URL()+"/upload?compression=none", closure.Top); c.Err != nil {
		t.Fatalf("the retried nix copy failed:\n%s", c)
	}
	if c, _ := substitute(nix, b.URL(), public, closure.Top); c.Err != nil {
		t.Fatalf("substituting from B after the retry:\n%s", c)
	}
	if n := unfinishedUploads(t, server); n != 0 {
		t.Fatalf("%d unfinished uploads remain after the killed node started again", n)
	}
	verifyBucket(t, server, publicFile)
}

func unfinishedUploads(t *testing.T, server *harness.S3) int {
	t.Helper()
	n := 0
	for up := range server.Client().ListIncompleteUploads(context.Background(), "nix", "", true) {
		if up.Err != nil {
			t.Fatal(up.Err)
		}
		n++
	}
	return n
}
