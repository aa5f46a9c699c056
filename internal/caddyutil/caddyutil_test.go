package caddyutil

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
)

type pooled struct{ name string }

func (pooled) Destruct() error { return nil }

func TestPoolValue(t *testing.T) {
	pool := caddy.NewUsagePool()
	if _, loaded := pool.LoadOrStore("a", &pooled{"a"}); loaded {
		t.Fatal("a was there before")
	}
	if got, ok := PoolValue[*pooled](pool, "a"); !ok || got.name != "a" {
		t.Fatalf("PoolValue(a) = %v, %v", got, ok)
	}
	if refs, _ := pool.References("a"); refs != 1 {
		t.Fatalf("PoolValue added a reference: %d", refs)
	}
	if got, ok := PoolValue[*pooled](pool, "b"); ok || got != nil {
		t.Fatalf("PoolValue(b) = %v, %v", got, ok)
	}
}
