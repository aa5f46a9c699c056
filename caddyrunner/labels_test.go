package caddyrunner

import (
	"slices"
	"testing"
)

func TestParseLabels(t *testing.T) {
	set, err := parseLabels([]string{"self-hosted:docker://cargoxx-runner-job:latest", "other:host", "bare", "img:docker://alpine:3"})
	if err != nil {
		t.Fatal(err)
	}
	if got := set.names(); !slices.Equal(got, []string{"self-hosted", "other", "bare", "img"}) {
		t.Fatalf("names %v", got)
	}
	tests := map[string]string{
		"self-hosted": "cargoxx-runner-job:latest",
		"other":       hostPlatform,
		"bare":        hostPlatform,
		"img":         "alpine:3",
	}
	for runsOn, want := range tests {
		if got := set.pickPlatform([]string{"unknown", runsOn}); got != want {
			t.Errorf("pickPlatform(%s) = %q, want %q", runsOn, got, want)
		}
	}
}

func TestParseLabelsRejects(t *testing.T) {
	for _, bad := range [][]string{
		{"x:vm://thing"},
		{"x:docker://"},
		{"x:docker"},
		{"x:host:arg"},
		{":host"},
		{"a b:host"},
		{"dup:host", "dup:docker://alpine"},
	} {
		if _, err := parseLabels(bad); err == nil {
			t.Errorf("parseLabels(%q) succeeded", bad)
		}
	}
}
