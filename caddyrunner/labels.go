package caddyrunner

import (
	"fmt"
	"strings"
)

// label is one runner label, `name[:schema[:arg]]`: `name:docker://image`
// runs jobs in a container of that image, `name:host` (or a bare name) runs
// them on the host.
type label struct {
	name   string
	schema string // "docker" or "host"
	image  string // for docker labels
}

// hostPlatform is the platform act runs on the host instead of in a
// container.
const hostPlatform = "-self-hosted"

func parseLabel(s string) (label, error) {
	parts := strings.SplitN(s, ":", 3)
	l := label{name: parts[0], schema: "host"}
	if l.name == "" || strings.ContainsAny(l.name, " ,\t") {
		return label{}, fmt.Errorf("label %q: the name must be non-empty and contain no spaces or commas", s)
	}
	if len(parts) >= 2 {
		l.schema = parts[1]
	}
	switch l.schema {
	case "host":
		if len(parts) == 3 {
			return label{}, fmt.Errorf("label %q: a host label takes no argument; write %s:host", s, l.name)
		}
	case "docker":
		if len(parts) < 3 || strings.TrimPrefix(parts[2], "//") == "" {
			return label{}, fmt.Errorf("label %q: a docker label names an image, e.g. %s:docker://alpine:3", s, l.name)
		}
		l.image = strings.TrimPrefix(parts[2], "//")
	default:
		return label{}, fmt.Errorf("label %q: schema %q is not supported (use docker://IMAGE or host)", s, l.schema)
	}
	return l, nil
}

// labelSet is the runner's labels in configuration order.
type labelSet []label

func parseLabels(specs []string) (labelSet, error) {
	set := make(labelSet, 0, len(specs))
	seen := map[string]bool{}
	for _, spec := range specs {
		l, err := parseLabel(spec)
		if err != nil {
			return nil, err
		}
		if seen[l.name] {
			return nil, fmt.Errorf("label name %q is given twice", l.name)
		}
		seen[l.name] = true
		set = append(set, l)
	}
	return set, nil
}

// names are what Gitea sees: only label names leave the runner.
func (s labelSet) names() []string {
	out := make([]string, len(s))
	for i, l := range s {
		out[i] = l.name
	}
	return out
}

// pickPlatform returns the image (or hostPlatform) of the first runs-on
// entry the runner has a label for. Gitea only sends jobs whose runs-on
// labels the runner covers, so a miss means the labels changed since.
func (s labelSet) pickPlatform(runsOn []string) string {
	for _, want := range runsOn {
		for _, l := range s {
			if l.name == want {
				if l.schema == "docker" {
					return l.image
				}
				return hostPlatform
			}
		}
	}
	return ""
}
