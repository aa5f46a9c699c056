package caddystatus

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/cargoxx-pkgs/runner/internal/adapttest"

	// The handlers the snapshots put the page behind.
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
)

func TestCaddyfileAdaptSnapshots(t *testing.T) {
	adapttest.Run(t, "testdata")
}

func TestCaddyfileErrors(t *testing.T) {
	for input, want := range map[string]string{
		"host_status extra":                 "wrong argument count",
		"host_status {\n\trefresh\n}":       "wrong argument count",
		"host_status {\n\trefresh 0s\n}":    "not a positive duration",
		"host_status {\n\trefresh soon\n}":  "not a positive duration",
		"host_status {\n\ttitle a b\n}":     "wrong argument count",
		"host_status {\n\tcolour blue\n}":   `unknown host_status option "colour"`,
		"host_status {\n\trefresh 1s 2s\n}": "wrong argument count",
	} {
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one saying %q", input, err, want)
		}
	}
}
