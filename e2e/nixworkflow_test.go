package e2e

import (
	"strings"
)

// closureScript is the lines of a workflow step's script, indented for a
// `run: |` block, that write /tmp/closure.nix: a let in which mk builds a
// path called name whose content names deps, so that they become its
// references, and different for every nonce (none when empty), followed
// by body, the rest of the let: more bindings and `in …`.
func closureScript(nonce, body string) string {
	lines := []string{
		"cat > /tmp/closure.nix <<'EOF'",
		"let",
		"  mk = name: deps: builtins.derivation {",
		"    inherit name;",
		"    system = builtins.currentSystem;",
		`    builder = "/bin/sh";`,
		`    args = [ "-c" "echo ${name} > $out; for d in ${toString deps}; do echo $d >> $out; done" ];`,
	}
	if nonce != "" {
		lines = append(lines, `    nonce = "`+nonce+`";`)
	}
	lines = append(lines, "  };")
	lines = append(lines, strings.Split(strings.TrimRight(body, "\n"), "\n")...)
	lines = append(lines, "EOF")
	for i := range lines {
		lines[i] = "          " + lines[i]
	}
	return strings.Join(lines, "\n")
}
