package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
)

// Empty is the storage of a cache that keeps nothing of its own and only
// passes on its other sources (a live store, upstream caches): every
// object is missing, and nothing can be written.
var Empty Store = emptyStore{}

// ErrNoStorage is a write to Empty.
var ErrNoStorage = errors.New("the cache has no storage of its own: set root, or storage s3, to keep anything")

type emptyStore struct{}

func (emptyStore) Stat(_ context.Context, name string) (Info, error) {
	return Info{}, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
}

func (emptyStore) Open(_ context.Context, name string) (Object, Info, error) {
	return nil, Info{}, fmt.Errorf("%s: %w", name, fs.ErrNotExist)
}

func (emptyStore) Create(context.Context, string) (Upload, error) { return nil, ErrNoStorage }
func (emptyStore) Delete(context.Context, string) error           { return nil }
func (emptyStore) List(context.Context, string) ([]Info, error)   { return nil, nil }
func (emptyStore) Close() error                                   { return nil }
