package storage

import (
	"context"
	"errors"
	"io/fs"
)

// Layered returns a Store that reads from top and, for what top does not
// hold, from below, and writes, deletes and lists in top only: an overlay
// whose objects may need objects of the store below it. Closing it closes
// neither.
func Layered(top, below Store) Store { return layered{top: top, below: below} }

type layered struct{ top, below Store }

func (l layered) Stat(ctx context.Context, name string) (Info, error) {
	info, err := l.top.Stat(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		return l.below.Stat(ctx, name)
	}
	return info, err
}

func (l layered) Open(ctx context.Context, name string) (Object, Info, error) {
	obj, info, err := l.top.Open(ctx, name)
	if errors.Is(err, fs.ErrNotExist) {
		return l.below.Open(ctx, name)
	}
	return obj, info, err
}

func (l layered) Create(ctx context.Context, name string) (Upload, error) {
	return l.top.Create(ctx, name)
}

func (l layered) Delete(ctx context.Context, name string) error { return l.top.Delete(ctx, name) }

func (l layered) List(ctx context.Context, dir string) ([]Info, error) { return l.top.List(ctx, dir) }

func (l layered) Walk(ctx context.Context, dir string, fn func(Info) error) error {
	return Walk(ctx, l.top, dir, fn)
}

func (l layered) Close() error { return nil }
