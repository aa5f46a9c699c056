package harness

import (
	"fmt"
	"strings"
)

// Caddyfile is the Caddyfile of a test or benchmark: the admin endpoint on
// {$CADDY_ADMIN} (a unix socket unless the test asks for TCP), optionally
// a gitea_runner, optionally a nix_cache site on the test's HTTP port
// bound to loopback, and any other sites. String writes it.
type Caddyfile struct {
	// Global are more global options, one per entry.
	Global []string
	Runner *RunnerBlock
	Cache  *CacheSite
	// Sites are more site blocks, as written.
	Sites []string
}

// RunnerBlock is a gitea_runner block.
type RunnerBlock struct {
	Instance string
	// RegistrationToken is left out when empty (api_token, a state file).
	RegistrationToken string
	Labels            string
	// Options are more options, one per entry, e.g. "fetch_interval 500ms".
	Options []string
	// Container are the lines of a container block; none when nil.
	Container []string
	// NixCache names the nix_cache jobs use; none when empty.
	NixCache              string
	KeepDefaultBranchRuns int
	// AutoPush is the nix_cache block's auto_push; left out when empty.
	AutoPush string
}

// CacheSite is a site on {$CADDY_HTTP_PORT}, bound to 127.0.0.1, with a
// nix_cache handler.
type CacheSite struct {
	// Options are the handler's options, one per entry, e.g. "root DIR".
	Options []string
	// Upload are the lines of an upload block: none when nil, a bare
	// `upload` when empty.
	Upload []string
}

// String writes the Caddyfile.
func (c Caddyfile) String() string {
	var b strings.Builder
	b.WriteString("{\n\tadmin {$CADDY_ADMIN}\n")
	for _, option := range c.Global {
		fmt.Fprintf(&b, "\t%s\n", indent(option, 1))
	}
	if r := c.Runner; r != nil {
		fmt.Fprintf(&b, "\tgitea_runner {\n\t\tinstance %s\n", r.Instance)
		if r.RegistrationToken != "" {
			fmt.Fprintf(&b, "\t\tregistration_token %s\n", r.RegistrationToken)
		}
		fmt.Fprintf(&b, "\t\tlabels %s\n", r.Labels)
		for _, option := range r.Options {
			fmt.Fprintf(&b, "\t\t%s\n", indent(option, 2))
		}
		if r.Container != nil {
			b.WriteString("\t\tcontainer {\n")
			for _, line := range r.Container {
				fmt.Fprintf(&b, "\t\t\t%s\n", line)
			}
			b.WriteString("\t\t}\n")
		}
		if r.NixCache != "" {
			var cacheOptions []string
			if r.KeepDefaultBranchRuns > 0 {
				cacheOptions = append(cacheOptions, fmt.Sprintf("keep_default_branch_runs %d", r.KeepDefaultBranchRuns))
			}
			if r.AutoPush != "" {
				cacheOptions = append(cacheOptions, "auto_push "+r.AutoPush)
			}
			fmt.Fprintf(&b, "\t\tnix_cache %s", r.NixCache)
			if len(cacheOptions) > 0 {
				fmt.Fprintf(&b, " {\n\t\t\t%s\n\t\t}", strings.Join(cacheOptions, "\n\t\t\t"))
			}
			b.WriteString("\n")
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	if s := c.Cache; s != nil {
		b.WriteString("\nhttp://:{$CADDY_HTTP_PORT} {\n\tbind 127.0.0.1\n")
		b.WriteString("\tnix_cache {\n")
		for _, option := range s.Options {
			fmt.Fprintf(&b, "\t\t%s\n", indent(option, 2))
		}
		switch {
		case s.Upload == nil:
		case len(s.Upload) == 0:
			b.WriteString("\t\tupload\n")
		default:
			b.WriteString("\t\tupload {\n")
			for _, line := range s.Upload {
				fmt.Fprintf(&b, "\t\t\t%s\n", line)
			}
			b.WriteString("\t\t}\n")
		}
		b.WriteString("\t}\n}\n")
	}
	for _, site := range c.Sites {
		b.WriteString("\n" + site + "\n")
	}
	return b.String()
}

// indent puts the lines after the first of a multi-line option (a block)
// at the option's depth.
func indent(option string, depth int) string {
	return strings.ReplaceAll(option, "\n", "\n"+strings.Repeat("\t", depth))
}

// CacheOptions are the nix_cache options of a cache in root signed with
// the given secret key files.
func CacheOptions(root string, secretKeyFiles ...string) []string {
	options := []string{"root " + root}
	for _, key := range secretKeyFiles {
		options = append(options, "secret_key_file "+key)
	}
	return options
}
