package e2e

import (
	"fmt"
	"html"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/e2e/harness"
)

func TestLandingPage(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildClosure("landing", 0)
		root := filepath.Join(t.TempDir(), "cache")
		if c := nix.Copy("--to", "file://"+root, closure.Top); c.Err != nil {
			t.Fatalf("filling the cache:\n%s", c)
		}
		secret, public := keygen(t, "landing-1")
		caddy := harness.StartCaddy(t, cacheCaddyfile(root, secret), harness.CaddyOptions{})

		text := get(t, caddy.URL()+"/", nil, http.StatusOK)
		for _, want := range []string{
			"127.0.0.1: a Nix binary cache", // the host name, as no name is configured
			"paths: 3\n",
			"last push: none since the server started\n", // it was filled from outside
			"  " + public + "\n",
			"extra-substituters = " + caddy.URL() + "\n",
			"extra-trusted-public-keys = " + public + "\n",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("plain-text landing page lacks %q:\n%s", want, text)
			}
		}
		page := get(t, caddy.URL()+"/", map[string]string{"Accept": "text/html,application/xhtml+xml"}, http.StatusOK)
		html := html.UnescapeString(page) // base64 keys may hold '+', which HTML escapes
		if !strings.Contains(html, "<code>"+public+"</code>") || !strings.Contains(html, "extra-trusted-public-keys = "+public) {
			t.Errorf("HTML landing page lacks the public key or the nix.conf snippet:\n%s", html)
		}
		if strings.Contains(text+html, readSecret(t, secret)) {
			t.Fatal("the landing page shows the secret key")
		}
	})
}

func TestNarinfoFollowsFileChangesAndMetricsSurviveReload(t *testing.T) {
	harness.ForEachNix(t, func(t *testing.T, client harness.NixClient) {
		nix := client.New(t, "")
		closure := nix.BuildClosure("metrics", 0)
		root := filepath.Join(t.TempDir(), "cache")
		if c := nix.Copy("--to", "file://"+root, closure.Top); c.Err != nil {
			t.Fatalf("filling the cache:\n%s", c)
		}
		secret, _ := keygen(t, "metrics-1")
		config := cacheCaddyfile(root, secret)
		caddy := harness.StartCaddy(t, config, harness.CaddyOptions{})

		hash := strings.SplitN(filepath.Base(closure.Top), "-", 2)[0]
		url := caddy.URL() + "/" + hash + ".narinfo"
		first := get(t, url, nil, http.StatusOK)
		if !strings.Contains(first, "\nDeriver: ") {
			t.Fatalf("served narinfo has no Deriver:\n%s", first)
		}
		// Rewrite the stored narinfo: the signed copy in memory must not be served.
		file := filepath.Join(root, hash+".narinfo")
		stored, _ := os.ReadFile(file)
		changed := regexp.MustCompile(`(?m)^Deriver: .*$`).ReplaceAllString(string(stored), "Deriver: unknown-deriver")
		if err := os.WriteFile(file+".new", []byte(changed), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
		if second := get(t, url, nil, http.StatusOK); strings.Contains(second, "\nDeriver: ") {
			t.Fatalf("the narinfo changed on disk but the old one is still served:\n%s", second)
		}
		get(t, caddy.URL()+"/00000000000000000000000000000000.narinfo", nil, http.StatusNotFound)

		before := metric(t, caddy, `caddy_nix_cache_narinfo_lookups_total{result="served"}`)
		if err := caddy.Reload(strings.Replace(config, "\t\troot ", "\t\tpriority 30\n\t\troot ", 1)); err != nil {
			t.Fatal(err)
		}
		if info := get(t, caddy.URL()+"/nix-cache-info", nil, http.StatusOK); !strings.Contains(info, "Priority: 40") && !strings.Contains(info, "Priority: 30") {
			t.Fatalf("nix-cache-info after reload: %q", info)
		}
		get(t, url, nil, http.StatusOK)
		after := metric(t, caddy, `caddy_nix_cache_narinfo_lookups_total{result="served"}`)
		if before != 2 || after != 3 {
			t.Fatalf("narinfo served: %v before the reload, %v after; want 2 and 3", before, after)
		}
		if missing := metric(t, caddy, `caddy_nix_cache_narinfo_lookups_total{result="missing"}`); missing != 1 {
			t.Fatalf("narinfo missing: %v, want 1", missing)
		}
		if n := metric(t, caddy, `caddy_nix_cache_requests_total{code="404",kind="narinfo"}`); n != 1 {
			t.Fatalf("narinfo 404s counted: %v, want 1", n)
		}
	})
}

// metric reads one sample from the admin endpoint's /metrics.
func metric(t *testing.T, caddy *harness.Caddy, series string) float64 {
	t.Helper()
	body := adminGet(t, caddy, "/metrics")
	for line := range strings.Lines(body) {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no series %s in /metrics:\n%s", series, grepLines(body, "nix_cache"))
	return 0
}

func grepLines(s, substr string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return fmt.Sprint(strings.Join(out, ""))
}

func readSecret(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, secret, _ := strings.Cut(strings.TrimSpace(string(data)), ":")
	return secret
}
