package actionscache

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func TestCaddyfile(t *testing.T) {
	site := func(body string) string {
		return ":8080 {\n\tactions_cache {\n\t\t" + body + "\n\t}\n\trespond 404\n}"
	}
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site("name main\n\t\turl https://cache.example.org/\n\t\tmax_size 2GiB\n\t\tmax_age 3d")), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"handler":"actions_cache"`, `"name":"main"`, `"max_size":2147483648`, `"max_age":259200000000000`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted config lacks %s: %s", want, out)
		}
	}
	// A fallback written first still comes after it: the handler passes
	// on what is not its own, so nothing is lost by running it first.
	fallbackFirst := ":8080 {\n\trespond \"ok\"\n\thandle /x {\n\t\trespond 204\n\t}\n\tactions_cache {\n\t\tname main\n\t}\n}"
	out, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fallbackFirst), nil)
	if err != nil {
		t.Fatal(err)
	}
	adapted := string(out)
	if at, subroute, respond := strings.Index(adapted, `"handler":"actions_cache"`), strings.Index(adapted, `"handler":"subroute"`), strings.Index(adapted, `"handler":"static_response"`); at < 0 || at > subroute || at > respond {
		t.Errorf("actions_cache is not ordered before handle and respond: %s", adapted)
	}
	for _, bad := range []string{"max_size lots", "max_size 0", "max_age soon", "name a\n\t\tname b", "colour blue", "name"} {
		if out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site(bad)), nil); err == nil {
			t.Errorf("%q was accepted: %s", bad, out)
		}
	}
}
