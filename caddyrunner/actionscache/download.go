package actionscache

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/internal/caddyutil"
)

// downloadLifetime is how long a download URL works, as with GitHub.
const downloadLifetime = 10 * time.Minute

// signer makes and checks the download URLs of archives.
type signer struct{ key []byte }

func (s *signer) sign(id int64, expires int64) string {
	mac := hmac.New(sha256.New, s.key)
	_, _ = fmt.Fprintf(mac, "%d\x00%d", id, expires)
	return hex.EncodeToString(mac.Sum(nil))
}

// lookup finds the entry to restore: GET cache?keys=K1,K2&version=V. A hit
// is answered with a signed archive URL below the URL the job used, a miss
// with 204.
func (h *Handler) lookup(w http.ResponseWriter, r *http.Request, g *grant, base string) error {
	query := r.URL.Query()
	keys := strings.Split(query.Get("keys"), ",")
	for _, key := range keys {
		if err := checkKey(key); err != nil {
			return err
		}
	}
	version := query.Get("version")
	if err := checkVersion(version); err != nil {
		return err
	}
	now := time.Now()
	h.entries.pruneSoon(r.Context(), h.keep, now)
	e := h.entries.match(g.scope, keys, version)
	if e == nil {
		lookups.WithLabelValues(h.label, "miss").Inc()
		h.entries.lookups.misses.Add(1)
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	lookups.WithLabelValues(h.label, "hit").Inc()
	h.entries.lookups.hits.Add(1)
	h.entries.markUsed(r.Context(), e.ID, now)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	expires := now.Add(downloadLifetime).Unix()
	location := url.URL{
		Scheme:   scheme,
		Host:     r.Host,
		Path:     base + apiPath + "artifacts/" + strconv.FormatInt(e.ID, 10),
		RawQuery: url.Values{"expires": {strconv.FormatInt(expires, 10)}, "signature": {h.signer.sign(e.ID, expires)}}.Encode(),
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"result":          "hit",
		"archiveLocation": location.String(),
		"cacheKey":        e.Key,
		"cacheVersion":    e.Version,
		"scope":           e.Ref,
		"creationTime":    e.Created,
	})
}

// list answers GET caches?key=K, which @actions/cache asks for in debug
// mode after a miss: the job's readable entries whose key starts with K.
func (h *Handler) list(w http.ResponseWriter, r *http.Request, g *grant) error {
	prefix := r.URL.Query().Get("key")
	type listed struct {
		CacheKey     string    `json:"cacheKey"`
		CacheVersion string    `json:"cacheVersion"`
		Scope        string    `json:"scope"`
		CreationTime time.Time `json:"creationTime"`
	}
	found := []listed{}
	h.entries.mu.Lock()
	for _, e := range h.entries.entries {
		if e.Repository == g.scope.Repository && strings.HasPrefix(e.Key, prefix) && slices.Contains(g.scope.ReadRefs, e.Ref) {
			found = append(found, listed{e.Key, e.Version, e.Ref, e.Created})
		}
	}
	h.entries.mu.Unlock()
	return writeJSON(w, http.StatusOK, map[string]any{"totalCount": len(found), "artifactCaches": found})
}

// download serves an archive to whoever holds a live signed URL for it.
func (h *Handler) download(w http.ResponseWriter, r *http.Request, idText string) error {
	id, err := strconv.ParseInt(idText, 10, 64)
	if err != nil {
		return clientError(http.StatusNotFound, "%q is not an entry id", idText)
	}
	query := r.URL.Query()
	expires, err := strconv.ParseInt(query.Get("expires"), 10, 64)
	if err != nil || !hmac.Equal([]byte(query.Get("signature")), []byte(h.signer.sign(id, expires))) {
		return clientError(http.StatusForbidden, "the download URL is not one this cache signed")
	}
	if time.Now().Unix() > expires {
		return clientError(http.StatusForbidden, "the download URL expired; look the entry up again")
	}
	e, ok := h.entries.get(id)
	if !ok {
		return clientError(http.StatusNotFound, "the entry %d is gone", id)
	}
	obj, info, err := h.entries.store.Open(r.Context(), archiveName(id))
	if err != nil {
		return clientError(http.StatusNotFound, "the entry %d is gone", id)
	}
	defer func() { _ = obj.Close() }()
	if info.Size != e.Size {
		return fmt.Errorf("the archive of entry %d is %d bytes, its record says %d", id, info.Size, e.Size)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "private, no-store")
	body := w
	if f, ok := obj.(*os.File); ok && r.ProtoMajor == 1 {
		// An archive appears whole, by rename, when its upload is
		// committed, and is never written in place: it cannot grow
		// while it is sent.
		body = caddyutil.NewSendfileWriter(w, f, info.Size)
	}
	counter := &countingWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: body}}
	http.ServeContent(counter, r, "", info.ModTime, obj)
	downloadedBytes.WithLabelValues(h.label).Add(float64(counter.n))
	return nil
}
