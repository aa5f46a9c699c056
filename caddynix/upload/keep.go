package upload

import (
	"context"
	"path"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/nix-community/go-nix/pkg/narinfo"
)

// What the cache keeps of another cache (pull-through) is committed as an
// upload is: its NAR is checked in full and noted, and its narinfo is
// committed by the same rule, last.

// NoteNar remembers what the NAR stored under url holds, so that its
// narinfo's commit need not read it again.
func (u *Receiver) NoteNar(url string, meta NarMeta) { u.pending.put(url, meta) }

// StoredNarInfo returns the narinfo of the path whose hash part is hash,
// or nil when the cache holds none it would serve.
func (u *Receiver) StoredNarInfo(ctx context.Context, hash string) (*narinfo.NarInfo, error) {
	info, _, err := u.storedNarInfo(ctx, hash+".narinfo")
	return info, err
}

// CommitKept commits the narinfo of a path kept from another cache, whose
// NAR and references are stored, recording pusher for a new path. It
// returns the narinfo the cache holds for the path.
func (u *Receiver) CommitKept(ctx context.Context, info *narinfo.NarInfo, pusher *index.Pusher) (*narinfo.NarInfo, error) {
	hash := path.Base(info.StorePath)[:cacheurl.HashLen]
	req := cacheurl.Request{Kind: cacheurl.NarInfo, File: hash + ".narinfo", Hash: hash}
	kept, file, again, err := u.commitNarInfo(ctx, req, info, []byte(info.String()))
	if err != nil {
		return nil, err
	}
	u.pending.delete(kept.URL)
	if !again {
		record := index.FromNarInfo(kept, file)
		u.state.Record(u.logger, "a kept path "+kept.StorePath, func(idx *index.Index) error {
			return idx.RecordPush(record, pusher, file.ModTime)
		})
	}
	return kept, nil
}

// OwnKeyName reports whether name is the name of one of the cache's keys:
// only the cache signs under its names.
func (u *Receiver) OwnKeyName(name string) bool { return u.ownKeyName(name) }
