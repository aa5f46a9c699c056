package storage

import (
	"context"
	"strings"
	"time"
)

// Sub returns the part of store below the directory dir as a Store of its
// own: every name is dir + "/" + name, and Info.Name is again relative to
// dir. Presigning and use records pass through; the rest of store's
// optional interfaces (watching, leases, sweeping) stay the whole store's.
// Closing it does not close store.
func Sub(store Store, dir string) Store {
	s := &sub{store: store, prefix: strings.Trim(dir, "/") + "/"}
	presigner, presigns := store.(Presigner)
	recorder, records := store.(UseRecorder)
	switch {
	case presigns && records:
		return struct {
			Store
			Presigner
			UseRecorder
		}{s, subPresigner{s, presigner}, subUseRecorder{s, recorder}}
	case presigns:
		return struct {
			Store
			Presigner
		}{s, subPresigner{s, presigner}}
	case records:
		return struct {
			Store
			UseRecorder
		}{s, subUseRecorder{s, recorder}}
	}
	return s
}

type sub struct {
	store  Store
	prefix string
}

func (s *sub) full(name string) string { return s.prefix + name }

func (s *sub) rel(info Info) Info {
	info.Name = strings.TrimPrefix(info.Name, s.prefix)
	return info
}

func (s *sub) Stat(ctx context.Context, name string) (Info, error) {
	info, err := s.store.Stat(ctx, s.full(name))
	return s.rel(info), err
}

func (s *sub) Open(ctx context.Context, name string) (Object, Info, error) {
	obj, info, err := s.store.Open(ctx, s.full(name))
	return obj, s.rel(info), err
}

func (s *sub) Create(ctx context.Context, name string) (Upload, error) {
	return s.store.Create(ctx, s.full(name))
}

func (s *sub) Delete(ctx context.Context, name string) error {
	return s.store.Delete(ctx, s.full(name))
}

func (s *sub) List(ctx context.Context, dir string) ([]Info, error) {
	infos, err := s.store.List(ctx, strings.TrimSuffix(s.full(dir), "/"))
	for i := range infos {
		infos[i] = s.rel(infos[i])
	}
	return infos, err
}

func (s *sub) Walk(ctx context.Context, dir string, fn func(Info) error) error {
	return Walk(ctx, s.store, strings.TrimSuffix(s.full(dir), "/"), func(info Info) error { return fn(s.rel(info)) })
}

func (s *sub) Close() error { return nil }

type subPresigner struct {
	sub *sub
	p   Presigner
}

func (p subPresigner) PresignGet(ctx context.Context, name string, ttl time.Duration) (string, error) {
	return p.p.PresignGet(ctx, p.sub.full(name), ttl)
}

type subUseRecorder struct {
	sub *sub
	r   UseRecorder
}

func (r subUseRecorder) RecordUse(ctx context.Context, name string, at time.Time) error {
	return r.r.RecordUse(ctx, r.sub.full(name), at)
}
