// Package upload receives what clients push to a nix_cache (`nix copy
// --to http(s)://…`): NARs, narinfos, listings, build logs, realisations
// and nix-cache-info. Every upload is checked in full before anything is
// visible: a NAR's file and NAR hashes and structure while it streams to a
// temporary object, a narinfo by the cache's one rule (nixfmt.Admit) and
// against the NAR it names, and a narinfo, the commit point, is written
// last, only when its NAR and references are stored, and never replaces
// another path.
//
// It knows the storage, the index and retention's gate, and nothing of
// Caddy or HTTP: the handler authenticates the client, hands over the
// body, and answers an *Error with its status.
package upload

import (
	"context"
	"errors"
	"syscall"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// Put checks and stores an upload of the file req names, pushed by
// pusher. A refusal is an *Error.
func (u *Receiver) Put(ctx context.Context, req cacheurl.Request, body Body, pusher *index.Pusher) error {
	if !u.hasRoomFor(body.Length) {
		return storageFull(req)
	}
	err := u.put(ctx, req, body, pusher)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		// Nothing of it is kept: a failed write removes its temporary
		// file.
		return storageFull(req)
	}
	return err
}

// hasRoomFor reports whether the storage can take a body of length bytes,
// when both are known: a body that cannot fit is refused before it is
// read, so that a client retrying its upload is answered at once.
func (u *Receiver) hasRoomFor(length int64) bool {
	space, ok := u.store.(storage.SpaceReporter)
	if !ok || length <= 0 {
		return true
	}
	free, err := space.FreeSpace()
	return err != nil || free > length
}

// storageFull refuses an upload the storage has no room for.
func storageFull(req cacheurl.Request) error {
	return reject(statusInsufficientStorage, "storage_full",
		"the cache's storage is full: /%s was not stored; push it again once a collection or an operator frees space", req.File)
}

func (u *Receiver) put(ctx context.Context, req cacheurl.Request, body Body, pusher *index.Pusher) error {
	switch req.Kind {
	case cacheurl.Nar:
		return u.putNar(ctx, req, body)
	case cacheurl.NarInfo:
		return u.putNarInfo(ctx, req, body, pusher)
	case cacheurl.CacheInfo:
		return u.putCacheInfo(ctx, body)
	case cacheurl.Listing:
		return u.putDocument(ctx, req.File, body, maxListingSize, true)
	case cacheurl.Realisation:
		return u.putDocument(ctx, req.File, body, nixfmt.MaxSmallDocumentSize, true)
	case cacheurl.Log:
		return u.putDocument(ctx, req.File, body, u.maxLogSize, false)
	}
	return reject(statusMethodNotAllowed, "bad_path", "/%s cannot be uploaded", req.File)
}
