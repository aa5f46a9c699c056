package upload

import (
	"bytes"
	"context"
	"path"
	"slices"
	"strings"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"go.uber.org/zap"
)

// ForOverlay returns a Receiver that stores what it is given in the
// overlay of key instead of the cache proper: checked in full as every
// upload is, with NARs and references that the cache proper holds
// counting as stored, and a path the cache proper holds answered as the
// cache proper answers it. Its pushes are recorded in the overlay's
// record, never in the cache's index. signingKey, when not nil, is the
// overlay's key, whose name a pushed signature may not claim either.
func (u *Receiver) ForOverlay(key overlay.Key, signingKey *signature.SecretKey) *Receiver {
	o := *u
	o.base = u.store
	o.store = storage.Layered(overlay.Store(u.store, key.ID()), u.store)
	o.overlay = &key
	if signingKey != nil {
		o.keys = append(slices.Clone(u.keys), *signingKey)
	}
	return &o
}

// compareOverlays looks for the path of a trusted push in every overlay,
// and warns of each that holds it with another NAR: someone pushed it
// first from a ref to plant it, or the build is not reproducible. The
// trusted push is stored either way; what an overlay holds is never
// promoted into the cache proper.
func (u *Receiver) compareOverlays(ctx context.Context, trusted *narinfo.NarInfo) {
	records, err := overlay.List(ctx, u.store)
	if err != nil {
		u.logger.Warn("listing the overlays to compare a trusted push with", zap.String("path", trusted.StorePath), zap.Error(err))
	}
	name := path.Base(trusted.StorePath)[:cacheurl.HashLen] + ".narinfo"
	for _, rec := range records {
		data, err := storage.ReadAll(ctx, overlay.Store(u.store, rec.ID), name, nixfmt.MaxNarInfoSize)
		if err != nil {
			continue
		}
		theirs, err := nixfmt.Admit(data, u.storeDir, strings.TrimSuffix(name, ".narinfo"))
		if err != nil || bytes.Equal(theirs.NarHash.Digest(), trusted.NarHash.Digest()) {
			continue
		}
		u.metrics.Diverged()
		u.logger.Warn("an overlay holds this path with another NAR than its trusted push: tampering, or a build that is not reproducible; the trusted push is what the cache serves",
			zap.String("path", trusted.StorePath), zap.String("repository", rec.Repository), zap.String("ref", rec.Ref),
			zap.String("trusted_nar_hash", trusted.NarHash.String()), zap.String("overlay_nar_hash", theirs.NarHash.String()))
	}
}
