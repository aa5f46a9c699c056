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

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
)

// Put checks and stores an upload of the file req names, pushed by
// pusher. A refusal is an *Error.
func (u *Receiver) Put(ctx context.Context, req cacheurl.Request, body Body, pusher *index.Pusher) error {
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
