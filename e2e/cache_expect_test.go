package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

// expectContinuePut sends the header of a PUT of body that asks for
// "100 Continue" before the body, as curl and nix do for large uploads, and
// returns the answer. The body is sent only if the server asks for it.
func expectContinuePut(t *testing.T, addr, path, token string, body []byte) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Long enough for any loaded machine, far shorter than the read
	// timeouts a server waiting for the body would sit out.
	if err := conn.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		t.Fatal(err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte("nix:" + token))
	if _, err := fmt.Fprintf(conn, "PUT /%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Basic %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
		path, addr, auth, len(body)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("PUT /%s: no answer before the body was sent: %v", path, err)
	}
	if resp.StatusCode != http.StatusContinue {
		return resp
	}
	if _, err := conn.Write(body); err != nil {
		t.Fatal(err)
	}
	if resp, err = http.ReadResponse(r, nil); err != nil {
		t.Fatalf("PUT /%s: no answer after the body: %v", path, err)
	}
	return resp
}

// TestUnwantedUploadIsAnsweredAtOnce checks that an upload the cache does
// not need, a NAR it already has or one without a valid token, is answered
// without waiting for a body the client offered with "Expect: 100-continue",
// and that a wanted one still gets "100 Continue".
func TestUnwantedUploadIsAnsweredAtOnce(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		root := filepath.Join(t.TempDir(), "cache")
		secret, _ := keygen(t, "expect-1")
		caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})
		leaf := pathsOf(t, nix, nix.BuildClosure("expect", 1<<20), "none")["leaf"]
		addr := strings.TrimPrefix(caddy.URL(), "http://")

		resp := expectContinuePut(t, addr, leaf.narURL, uploadToken, leaf.nar)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("first upload of the NAR: %s", resp.Status)
		}
		for name, tc := range map[string]struct {
			token  string
			status int
		}{
			"NAR already stored": {uploadToken, http.StatusCreated},
			"wrong token":        {"not-the-token-0123456789abcdef", http.StatusUnauthorized},
		} {
			t.Run(name, func(t *testing.T) {
				resp := expectContinuePut(t, addr, leaf.narURL, tc.token, leaf.nar)
				if resp.StatusCode != tc.status {
					t.Fatalf("got %s, want %d", resp.Status, tc.status)
				}
				if !resp.Close {
					t.Error("the answer keeps the connection open, so the client would still have to send the body it offered")
				}
			})
		}
	})
}

// TestRefusedUploadWithStalledBodyIsAnsweredAtOnce sends a PUT without
// credentials whose body stops after a few bytes, as a client that hangs
// would: the refusal comes at once, not after the server's idle timeout.
func TestRefusedUploadWithStalledBodyIsAnsweredAtOnce(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	secret, _ := keygen(t, "stall-1")
	caddy := harness.StartCaddy(t, uploadCaddyfile(root, secret), harness.CaddyOptions{})
	addr := fmt.Sprintf("127.0.0.1:%d", caddy.HTTPPort)
	stalledPut := func(auth string) *http.Response {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// Far shorter than the idle timeout (5 minutes) a server waiting for
		// the rest of the body would sit out.
		if err := conn.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(conn, "PUT /nix-cache-info HTTP/1.1\r\nHost: %s\r\n%sContent-Length: 1000\r\n\r\nStoreDir: ", addr, auth); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer while the body stalls: %v", err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := stalledPut(""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an unauthenticated PUT with a stalled body: %s, want 401", resp.Status)
	}
	if log := caddy.Log(); strings.Contains(log, `"level":"error"`) {
		t.Fatalf("a stalled upload was logged as an error:\n%s", log)
	}
}
