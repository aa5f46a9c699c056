package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/overlay"
	"github.com/cargoxx-pkgs/runner/caddynix/retention"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// putNarInfo stores a narinfo, the commit point of a path's upload: it is
// accepted only when its NAR is stored and matches it, and its references
// are already in the cache. A path the cache already holds is never
// replaced: the same NAR again changes nothing, another one is a conflict.
func (u *Receiver) putNarInfo(ctx context.Context, req cacheurl.Request, sent Body, pusher *index.Pusher) error {
	data, err := readSmallBody(sent, nixfmt.MaxNarInfoSize)
	if err != nil {
		return err
	}
	u.metrics.Received("narinfo", int64(len(data)))
	info, err := u.admitNarInfo(data, req.Hash)
	if err != nil {
		return err
	}
	existing, _, err := u.storedNarInfo(ctx, req.File)
	if err != nil {
		return err
	}
	if existing == nil {
		// Reading the NAR again can take a while: not under the lock.
		if err := u.checkNarInfoNar(ctx, info); err != nil {
			return err
		}
	}
	// Only the cache signs with its own key names; a signature claiming one
	// of them is forged, or stale.
	info.Signatures = slices.DeleteFunc(info.Signatures, func(sig signature.Signature) bool {
		return u.ownKeyName(sig.Name)
	})
	// What is stored is checked again as stored, by the rule serving
	// applies, so that nothing accepted is answered as missing.
	stored := []byte(info.String())
	if _, err := u.admitNarInfo(stored, req.Hash); err != nil {
		return fmt.Errorf("as stored: %w", err)
	}
	info, file, again, err := u.commitNarInfo(ctx, req, info, stored)
	if err != nil {
		return err
	}
	u.pending.delete(info.URL)
	if u.overlay != nil {
		return nil
	}
	if !again {
		u.compareOverlays(ctx, info)
	}
	// A new path was pushed when its narinfo was written: the time a
	// rebuilt index reads from the file.
	at := time.Now()
	if !again {
		at = file.ModTime
	}
	path := index.FromNarInfo(info, file)
	u.state.Record(u.logger, "an upload of "+info.StorePath, func(idx *index.Index) error {
		return idx.RecordPush(path, pusher, at)
	})
	return nil
}

// commitNarInfo stores the narinfo unless the path is there, checking,
// under the lock that collections delete under, that its NAR and its
// references are stored, and telling a running collection that the path
// and what it needs are wanted again. It returns the narinfo the cache
// holds, its file, and whether the cache held it already.
func (u *Receiver) commitNarInfo(ctx context.Context, req cacheurl.Request, info *narinfo.NarInfo, stored []byte) (_ *narinfo.NarInfo, _ storage.Info, again bool, err error) {
	needs := []string{req.Hash, info.URL}
	for _, ref := range info.References {
		needs = append(needs, ref[:cacheurl.HashLen])
	}
	if u.overlay != nil {
		needs = append(needs, retention.OverlayKey(u.overlay.ID()))
	}
	requestCtx := ctx
	ctx, release, err := u.state.AdmitCommit(ctx, u.store, u.grace, needs)
	if announced := (*retention.AnnouncedError)(nil); errors.As(err, &announced) {
		// 409, not 503: Nix retries a 503 at once, and a retried upload
		// sends no body.
		return nil, storage.Info{}, false, &Error{Status: statusConflict, Reason: "being_collected", RetryAfter: announced.Grace, Msg: announced.Error()}
	}
	if err != nil {
		return nil, storage.Info{}, false, err
	}
	defer release()
	defer func() {
		if errors.Is(err, context.DeadlineExceeded) && requestCtx.Err() == nil {
			err = reject(statusUnavailable, "slow_commit", "the storage took too long to commit the narinfo for a collection on another node to see it; upload it again")
		}
	}()
	if u.overlay != nil {
		// Under the gate, so that a collection either keeps the overlay
		// for this push or drops it whole before, and the overlay is
		// listed whenever it holds anything.
		if err := overlay.Touch(ctx, u.base, *u.overlay, time.Now()); err != nil {
			return nil, storage.Info{}, false, fmt.Errorf("recording a push to the overlay of %s: %w", u.overlay, err)
		}
	}
	existing, replaceable, err := u.storedNarInfo(ctx, req.File)
	if err != nil {
		return nil, storage.Info{}, false, err
	}
	if existing == nil {
		if _, err := u.store.Stat(ctx, info.URL); err != nil {
			return nil, storage.Info{}, false, reject(statusBadRequest, "missing_nar", "the NAR %s has not been uploaded: upload it before its narinfo", info.URL)
		}
		self := path.Base(info.StorePath)
		for _, ref := range info.References {
			if ref == self {
				continue
			}
			if _, err := u.store.Stat(ctx, ref[:cacheurl.HashLen]+".narinfo"); err != nil {
				return nil, storage.Info{}, false, reject(statusBadRequest, "missing_reference",
					"reference %s is not in the cache: upload it first (a client that saw it in the cache before it was collected takes it to be there still: copy with `--option narinfo-cache-positive-ttl 0`)", ref)
			}
		}
		if err := u.ensureCacheInfoFile(ctx); err != nil {
			return nil, storage.Info{}, false, err
		}
		if replaceable {
			err = u.writeFile(ctx, req.File, stored)
		} else {
			existing, err = u.createNarInfo(ctx, req.File, stored)
		}
		if err != nil {
			return nil, storage.Info{}, false, err
		}
	}
	if existing != nil {
		if err := sameNar(existing, info); err != nil {
			return nil, storage.Info{}, false, err
		}
		info = existing
		// Pushed again: wanted again, also after the index is lost.
		u.state.MarkServed(req.Hash)
	}
	file, err := u.store.Stat(ctx, req.File)
	if err != nil {
		return nil, storage.Info{}, false, err
	}
	touched := []string{req.Hash, info.URL}
	for _, ref := range info.References {
		touched = append(touched, ref[:cacheurl.HashLen])
	}
	if u.overlay != nil {
		touched = append(touched, retention.OverlayKey(u.overlay.ID()))
	}
	u.state.Touch(touched...)
	return info, file, existing != nil, nil
}

// createNarInfo stores a narinfo unless another upload of the same path
// came first, and then returns that one. An S3 server may refuse a
// conditional write for an object whose commit it has begun but not yet
// made visible (versitygw with sidecar metadata does), so a refusal with
// nothing to read is tried again rather than failed.
func (u *Receiver) createNarInfo(ctx context.Context, name string, data []byte) (*narinfo.NarInfo, error) {
	const attempts = 5
	for attempt := 1; ; attempt++ {
		created, err := u.createFile(ctx, name, data)
		if err != nil || created {
			return nil, err
		}
		existing, _, err := u.storedNarInfo(ctx, name)
		if err != nil || existing != nil {
			return existing, err
		}
		if attempt == attempts {
			return nil, fmt.Errorf("storing %s: the storage refused it as already there %d times, yet has none to read; upload it again", name, attempts)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * 20 * time.Millisecond):
		}
	}
}

// storedNarInfo returns the narinfo the cache holds under name, or nil;
// replaceable says a file is there that cannot be served, which is no
// valid path and may be replaced.
func (u *Receiver) storedNarInfo(ctx context.Context, name string) (info *narinfo.NarInfo, replaceable bool, err error) {
	data, err := storage.ReadAll(ctx, u.store, name, nixfmt.MaxNarInfoSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading the stored %s: %w", name, err)
	}
	info, err = nixfmt.Admit(data, u.storeDir, strings.TrimSuffix(name, ".narinfo"))
	if err != nil {
		return nil, true, nil
	}
	return info, false, nil
}

// sameNar accepts an upload of a path the cache holds only when it
// describes the same NAR; the stored narinfo stays as it is. Uploads never
// replace a path, as Nix's own stores never replace a valid path.
func sameNar(existing, upload *narinfo.NarInfo) error {
	if !bytes.Equal(existing.NarHash.Digest(), upload.NarHash.Digest()) || existing.NarSize != upload.NarSize {
		return reject(statusConflict, "path_exists", "the cache already holds %s with NarHash %s and NarSize %d, and never replaces it with another NAR",
			existing.StorePath, existing.NarHash, existing.NarSize)
	}
	return nil
}

// ownKeyName reports whether name is the name of one of the cache's keys.
func (u *Receiver) ownKeyName(name string) bool {
	for _, key := range u.keys {
		if key.ToPublicKey().Name == name {
			return true
		}
	}
	return false
}

// admitNarInfo applies the cache's one narinfo rule, nixfmt.Admit, to an
// upload.
func (u *Receiver) admitNarInfo(data []byte, hash string) (*narinfo.NarInfo, error) {
	info, err := nixfmt.Admit(data, u.storeDir, hash)
	var refused *nixfmt.AdmitError
	if errors.As(err, &refused) {
		return nil, reject(statusBadRequest, refused.Reason, "%v", refused)
	}
	return info, err
}

// checkNarInfoNar checks the narinfo against the stored NAR it names.
func (u *Receiver) checkNarInfoNar(ctx context.Context, info *narinfo.NarInfo) error {
	meta, err := u.narMetaOf(ctx, info.URL)
	if errors.Is(err, fs.ErrNotExist) {
		return reject(statusBadRequest, "missing_nar", "the NAR %s has not been uploaded: upload it before its narinfo", info.URL)
	}
	if err != nil {
		return err
	}
	return meta.Matches(info)
}
