package sources

import (
	"context"
	"io"
	"net/http"
	"path"
	"slices"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/cacheurl"
	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/cargoxx-pkgs/runner/caddynix/storage/index"
	"github.com/cargoxx-pkgs/runner/caddynix/upload"
	"github.com/cargoxx-pkgs/runner/internal/iox"
	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"go.uber.org/zap"
)

// Pull-through: with keep, what an upstream sends a client goes into the
// cache's storage too, checked in full as an upload is, and a path is
// committed only once its references are kept, fetched from the same
// upstream in the background when the client did not ask for them.

// keptForm is the narinfo under which the cache keeps an upstream path:
// the upstream's, with its NAR named as `nix copy --to file://` names it,
// whatever name the upstream gives it (harmonia's and a live store's
// `nar/<narhash>.nar?hash=…`, or any other). The NAR is kept as the
// upstream sends it, named by its FileHash; where the upstream's narinfo
// has no FileHash (a store that compresses as it serves), the cache
// cannot name it before it has all of it, and keeps it decompressed,
// named by its NarHash, as an uncompressed `nix copy` would. The result
// passes the cache's rule for what it stores.
func (s *Sources) keptForm(info *narinfo.NarInfo) (*narinfo.NarInfo, error) {
	kept := *info
	kept.Signatures = slices.DeleteFunc(slices.Clone(info.Signatures), func(sig signature.Signature) bool {
		return s.keeper.OwnKeyName(sig.Name)
	})
	if info.FileHash == nil || info.FileHash.Algo() != nixhash.SHA256 || info.FileSize == 0 {
		kept.Compression, kept.FileHash, kept.FileSize = "none", info.NarHash, info.NarSize
	}
	kept.URL = "nar/" + kept.FileHash.Format(nixhash.NixBase32, false) + nixfmt.NarCompressions[kept.Compression]
	if _, err := nixfmt.Admit([]byte(kept.String()), s.storeDir, path.Base(info.StorePath)[:cacheurl.HashLen]); err != nil {
		return nil, err
	}
	return &kept, nil
}

// pullThrough streams an upstream NAR to the client and into the cache at
// once, and checks it in full as an upload is checked. A NAR that does
// not match its narinfo is cut short for the client and never stored; one
// that matches is kept, with whatever of its closure the cache lacks, in
// the background.
func (s *Sources) pullThrough(w http.ResponseWriter, r *http.Request, req cacheurl.Request, from upstreamNarinfo, kept *narinfo.NarInfo, resp *http.Response) error {
	info := from.info
	ctx := r.Context()
	up, err := s.store.Create(ctx, kept.URL)
	if err != nil {
		return &StorageError{What: "keeping an upstream NAR", File: kept.URL, Err: err}
	}
	defer up.Abort()
	w.WriteHeader(http.StatusOK)
	tail := &iox.TailWriter{W: w, Hold: heldBack}
	meta, err := upload.ReceiveNar(io.MultiWriter(up, tail), resp.Body, info.Compression, s.keeper.MaxNarSize(), -1)
	if err == nil {
		err = meta.Matches(info)
	}
	if err != nil {
		s.logger.Error("an upstream NAR was not passed on whole, and is not kept", zap.String("upstream", from.from.base), zap.String("file", req.File), zap.Error(err))
		return httpx.Aborted{Err: err}
	}
	if err := up.Commit(); err != nil {
		s.logger.Error("keeping an upstream NAR", zap.String("file", kept.URL), zap.Error(err))
	} else {
		s.keeper.NoteNar(kept.URL, meta)
	}
	if err := tail.Release(); err != nil {
		return httpx.Aborted{Err: err}
	}
	// The client has its NAR; keeping the narinfo, and the references
	// the cache lacks, must not wait on it.
	s.keepInBackground(from)
	return nil
}

// keepInBackground keeps an upstream path whose NAR is stored, fetching
// first whatever of its closure the cache lacks, while the configuration
// runs. One closure is fetched at a time per cache.
func (s *Sources) keepInBackground(from upstreamNarinfo) {
	s.keeping.Add(1)
	go func() {
		defer s.keeping.Done()
		if err := s.keepSlots.Acquire(s.ctx, 1); err != nil {
			return
		}
		defer s.keepSlots.Release(1)
		s.keepClosure(s.ctx, from, map[string]bool{})
	}()
}

// keepClosure keeps an upstream path: its references the cache does not
// hold are fetched from the same upstream and kept first, each checked in
// full, then its NAR if it is not stored, then its narinfo. A path
// missing from the upstream, or that cannot be kept, leaves its
// referrers unkept, as a closure is kept whole or not at all.
func (s *Sources) keepClosure(ctx context.Context, from upstreamNarinfo, visited map[string]bool) bool {
	info := from.info
	self := path.Base(info.StorePath)
	visited[self] = true
	for _, ref := range info.References {
		if ref == self || visited[ref] {
			continue
		}
		refHash := ref[:cacheurl.HashLen]
		if stored, err := s.keeper.StoredNarInfo(ctx, refHash); err != nil || stored != nil {
			if err != nil {
				s.logger.Warn("not keeping an upstream path", zap.String("store_path", info.StorePath), zap.Error(err))
				return false
			}
			continue
		}
		refInfo, err := from.from.narInfo(ctx, s.storeDir, refHash)
		if err == nil {
			_, err = s.keptForm(refInfo)
		}
		if err != nil {
			s.logger.Info("not keeping an upstream path: a reference cannot be kept", zap.String("store_path", info.StorePath), zap.String("reference", ref), zap.Error(err))
			return false
		}
		if !s.keepClosure(ctx, upstreamNarinfo{from: from.from, info: refInfo}, visited) {
			return false
		}
	}
	kept, err := s.keptForm(info)
	if err != nil {
		from.from.warnUnkeepable(s.logger, info, err)
		return false
	}
	if _, err := s.store.Stat(ctx, kept.URL); err != nil {
		if err := s.fetchNar(ctx, from, kept); err != nil {
			s.logger.Warn("not keeping an upstream path: fetching its NAR", zap.String("store_path", info.StorePath), zap.String("upstream", from.from.base), zap.Error(err))
			return false
		}
	}
	return s.keepNarInfo(ctx, from, kept)
}

// fetchNar stores an upstream path's NAR as kept names it, checked in
// full against the upstream's narinfo and against kept.
func (s *Sources) fetchNar(ctx context.Context, from upstreamNarinfo, kept *narinfo.NarInfo) error {
	info := from.info
	resp, err := from.from.get(ctx, info.URL, nil)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body := io.Reader(resp.Body)
	if kept.Compression != info.Compression {
		plain, release, err := nixfmt.Decompressor(info.Compression, resp.Body)
		if err != nil {
			return err
		}
		defer release()
		body = plain
	}
	up, err := s.store.Create(ctx, kept.URL)
	if err != nil {
		return err
	}
	defer up.Abort()
	meta, err := upload.ReceiveNar(up, body, kept.Compression, s.keeper.MaxNarSize(), -1)
	if err == nil {
		err = meta.Matches(kept)
	}
	if err != nil {
		return err
	}
	if err := up.Commit(); err != nil {
		return err
	}
	s.keeper.NoteNar(kept.URL, meta)
	return nil
}

// keepNarInfo stores an upstream path's narinfo, whose NAR and references
// are stored, as an upload's is stored.
func (s *Sources) keepNarInfo(ctx context.Context, from upstreamNarinfo, info *narinfo.NarInfo) bool {
	kept, err := s.keeper.CommitKept(ctx, info, &index.Pusher{Token: "upstream " + from.from.base})
	if err != nil {
		s.logger.Info("not keeping an upstream path", zap.String("store_path", info.StorePath), zap.String("upstream", from.from.base), zap.Error(err))
		return false
	}
	s.logger.Debug("kept an upstream path", zap.String("store_path", kept.StorePath), zap.String("upstream", from.from.base))
	return true
}
