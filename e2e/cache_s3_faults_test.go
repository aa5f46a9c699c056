package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// TestSubstitutionsSurviveACutS3Link substitutes a 21-path closure ten
// times, each into a fresh store, through a node whose connections to the
// S3 server are cut (a TCP reset in the middle of an answer) one in
// twenty: every substitution arrives whole and Nix never sees a cut NAR
// (it would retry), as the node resumes a cut read from the byte it
// reached.
func TestSubstitutionsSurviveACutS3Link(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		substitutionsSurviveACutS3Link(t, client)
	})
}

func substitutionsSurviveACutS3Link(t *testing.T, client harness.NixClient) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	proxy := harness.StartFaultProxy(t, strings.TrimPrefix(server.Endpoint, "http://"))
	throughProxy := *server
	throughProxy.Endpoint = "http://" + proxy.Addr
	secret, public := keygen(t, "s3-cut-1")
	node := s3Node(t, &throughProxy, secret)

	nix := client.Netrc(t, uploadToken)
	tops, base := nix.BuildSharedClosures("s3-cut", 10, 256<<10)
	if c := nix.Copy(append([]string{"--to", node.URL() + "/upload"}, tops...)...); c.Err != nil {
		t.Fatalf("nix copy:\n%s", c)
	}
	wantCount := 1 + 2*len(tops)

	// One connection in twenty is reset after 100 KiB of answers, inside
	// a NAR of 256 KiB.
	proxy.ResetConnections(20, 100<<10)
	whole, retried := 0, 0
	for round := range 10 {
		consumer := nix.WithFreshCache()
		store := consumer.ChrootStore()
		c := consumer.Run("nix-store", append([]string{"--store", store, "--realise",
			"--option", "substituters", node.URL(), "--option", "trusted-public-keys", public}, tops...)...)
		got := consumer.StorePaths(store)
		switch {
		case c.Err != nil:
			t.Errorf("round %d: the substitution failed:\n%s", round, c)
		case len(got) != wantCount || !slices.Contains(got, base):
			t.Errorf("round %d: the store holds %d paths, want the closure's %d", round, len(got), wantCount)
		default:
			whole++
		}
		if strings.Contains(c.Output, "retrying") {
			retried++
			t.Logf("round %d: nix retried a download:\n%s", round, c.Output)
		}
	}
	t.Logf("%d of 10 substitutions whole, %d with a download nix had to retry; the proxy cut %d S3 connections", whole, retried, proxy.Resets.Load())
	if proxy.Resets.Load() == 0 {
		t.Fatal("the proxy cut no connection: the test proved nothing")
	}
	if retried > 0 {
		t.Errorf("in %d of 10 substitutions nix got a cut NAR from the node and had to download it again", retried)
	}
}
