package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// TestS3NodeSplicesNARsWhole downloads NARs of a bucket over plain HTTP,
// as a node behind a TLS-terminating proxy serves them, from a node with
// an access log, which splices them off connections of its own to the S3
// server: every download is the NAR, byte for byte, on a client
// connection that goes on serving, and the access log and the metrics
// count every byte.
func TestS3NodeSplicesNARsWhole(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	nars := map[string][]byte{}
	for _, size := range []int{700, 3<<20 + 123} {
		name := randomNarName()
		nars[name] = putRandom(t, server, name, size)
	}
	secret, _ := keygen(t, "s3-splice-1")
	accessLog := filepath.Join(t.TempDir(), "access.log")
	site := fmt.Sprintf("http://127.0.0.1:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n\tlog {\n\t\toutput file %s\n\t\tformat json\n\t}\n\tnix_cache {\n\t\tname main\n\t\t%s\n\t\tsecret_key_file %s\n\t}\n}",
		accessLog, strings.ReplaceAll(server.StorageBlock("nix", "main/"), "\n", "\n\t\t"), secret)
	node := harness.StartCaddy(t, harness.Caddyfile{Sites: []string{site}}.String(), harness.CaddyOptions{})

	const rounds = 4
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	want := 0
	for round := range rounds {
		for name, data := range nars {
			resp, err := client.Get(node.URL() + "/" + name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 || !bytes.Equal(got, data) {
				t.Fatalf("round %d, %s: %s, %d of %d bytes, equal %v, %v", round, name, resp.Status, len(got), len(data), bytes.Equal(got, data), err)
			}
			want += len(data)
		}
	}
	if got := metricValue(t, node, `caddy_nix_cache_response_bytes_total{kind="nar"}`); got != float64(want) {
		t.Errorf("the metrics count %v NAR bytes served, want %d", got, want)
	}

	logged := map[string][]int{}
	data, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	scanner := bufio.NewScanner(bytes.NewReader(data))
	for scanner.Scan() {
		var entry struct {
			Request struct{ URI string } `json:"request"`
			Size    int                  `json:"size"`
		}
		if err := json.Unmarshal(scanner.Bytes(), &entry); err != nil {
			t.Fatalf("an access log line that is no JSON: %s", scanner.Text())
		}
		name := strings.TrimPrefix(entry.Request.URI, "/")
		logged[name] = append(logged[name], entry.Size)
	}
	for name, data := range nars {
		if sizes := logged[name]; len(sizes) != rounds || slices.ContainsFunc(sizes, func(size int) bool { return size != len(data) }) {
			t.Errorf("%s (%d bytes) is logged with the sizes %v, want %d downloads of it", name, len(data), sizes, rounds)
		}
	}
}

// TestS3NodeCutsAnAnswerTheStorageFails downloads a NAR over HTTP/1 and
// over HTTP/2 while it is replaced in the bucket and the node's
// connections to the S3 server are cut: the node cannot go on with the
// version it started, and the client's download fails (over HTTP/2 with
// the stream reset, not ended short of its Content-Length), the node logs
// why and counts the request as failed.
func TestS3NodeCutsAnAnswerTheStorageFails(t *testing.T) {
	server := harness.StartS3(t)
	server.CreateBucket("nix")
	throughProxy, proxy := behindFaultProxy(t, server)
	secret, _ := keygen(t, "s3-cut-answer-1")
	cert, key, pool := harness.SelfSignedCert(t)
	block := func() string {
		return fmt.Sprintf("nix_cache {\n\t\tname main\n\t\t%s\n\t\tsecret_key_file %s\n\t}", strings.ReplaceAll(throughProxy.StorageBlock("nix", "main/"), "\n", "\n\t\t"), secret)
	}
	node := harness.StartCaddy(t, harness.Caddyfile{
		Global: []string{"auto_https off"},
		Sites: []string{
			fmt.Sprintf("http://127.0.0.1:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n\t%s\n}", block()),
			fmt.Sprintf("https://127.0.0.1:{$CADDY_HTTPS_PORT} {\n\tbind 127.0.0.1\n\ttls %s %s\n\t%s\n}", cert, key, block()),
		},
	}.String(), harness.CaddyOptions{})
	const size = 64 << 20
	failedNARs := 0
	for _, over := range []struct {
		name, base string
		client     *http.Client
		proto      int
	}{
		{"HTTP/1", node.URL(), &http.Client{}, 1},
		{"HTTP/2", fmt.Sprintf("https://127.0.0.1:%d", node.HTTPSPort), &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}, 2},
	} {
		t.Run(over.name, func(t *testing.T) {
			name := randomNarName()
			putRandom(t, server, name, size)
			resp, err := over.client.Get(over.base + "/" + name)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != over.proto {
				t.Fatalf("%s %s", resp.Proto, resp.Status)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
				t.Fatal(err)
			}
			putRandom(t, server, name, size)
			proxy.ResetConnections(0, 0) // drops the open connections
			rest, err := io.Copy(io.Discard, resp.Body)
			if err == nil {
				t.Fatalf("the download ended as if whole after %d of %d bytes, although the NAR was replaced in the middle", 1<<20+rest, size)
			}
			t.Logf("the download failed after %d of %d bytes: %v", 1<<20+rest, size, err)
			if over.proto == 2 && errors.Is(err, io.ErrUnexpectedEOF) {
				t.Error("the HTTP/2 stream ended cleanly short of its Content-Length, which only a client that counts tells, rather than being reset")
			}
			failedNARs++
			if failed := metricValue(t, node, `caddy_nix_cache_requests_total{code="500",kind="nar"}`); failed != float64(failedNARs) {
				t.Errorf("the metrics count %v failed NAR requests, want %d", failed, failedNARs)
			}
			if !strings.Contains(node.Log(), "the storage failed in the middle of a file") {
				t.Error("the node did not log the failure")
			}
		})
	}
}

// randomNarName is the name of a NAR in a cache's layout, of a random hash.
func randomNarName() string {
	hash := make([]byte, 32)
	_, _ = rand.Read(hash)
	return "nar/" + nixbase32.EncodeToString(hash) + ".nar.zst"
}

// putRandom stores size random bytes as name in the bucket nix, below the
// prefix main/, and returns them.
func putRandom(t *testing.T, server *harness.S3, name string, size int) []byte {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if _, err := server.Client().PutObject(context.Background(), "nix", "main/"+name, bytes.NewReader(data), int64(size), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	return data
}
