package sources

import "sync"

// boundedMap is a memo that forgets everything when it reaches its bound:
// what it forgets only costs the work of finding it again, and memory
// stays bounded whatever clients ask for.
type boundedMap[K comparable, V any] struct {
	mu      sync.Mutex
	max     int
	entries map[K]V
}

func newBoundedMap[K comparable, V any](max int) *boundedMap[K, V] {
	return &boundedMap[K, V]{max: max}
}

func (b *boundedMap[K, V]) get(key K) (V, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.entries[key]
	return v, ok
}

func (b *boundedMap[K, V]) put(key K, v V) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries == nil || len(b.entries) >= b.max {
		b.entries = make(map[K]V)
	}
	b.entries[key] = v
}
