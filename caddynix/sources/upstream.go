package sources

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"go.uber.org/zap"
)

// heldBack is how much of an upstream's file is held back until it has
// been checked: a NAR's last string.
const heldBack = 16

// UpstreamOptions describe an upstream cache, with placeholders expanded;
// see the nix_cache handler's `upstream` option.
type UpstreamOptions struct {
	URL               string
	TrustedPublicKeys []string
	Keep, Sign        bool
	// Timeout bounds each narinfo lookup and the wait for a NAR's header;
	// 0 means 5s.
	Timeout time.Duration
}

// defaultUpstreamTimeout is UpstreamOptions.Timeout's default.
const defaultUpstreamTimeout = 5 * time.Second

// errUpstreamMiss is an upstream that does not have what was asked.
var errUpstreamMiss = errors.New("not in the upstream cache")

// upstream is a provisioned UpstreamConfig.
type upstream struct {
	base    string // the URL, without a trailing slash
	keys    []signature.PublicKey
	keep    bool
	sign    bool
	timeout time.Duration
	client  *http.Client
	// warnedUnkeepable is set once a path it serves could not be kept.
	warnedUnkeepable atomic.Bool
}

// warnUnkeepable logs, once per upstream, that a path it serves cannot be
// kept, and why; later ones are logged at debug level.
func (u *upstream) warnUnkeepable(logger *zap.Logger, info *narinfo.NarInfo, err error) {
	fields := []zap.Field{zap.String("upstream", u.base), zap.String("store_path", info.StorePath), zap.String("url", info.URL), zap.Error(err)}
	if u.warnedUnkeepable.CompareAndSwap(false, true) {
		logger.Warn("an upstream path is passed on but cannot be kept (later ones are logged at debug level)", fields...)
		return
	}
	logger.Debug("an upstream path is passed on but cannot be kept", fields...)
}

func newUpstream(cfg UpstreamOptions) (*upstream, error) {
	raw := strings.TrimRight(cfg.URL, "/")
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		return nil, fmt.Errorf("upstream %q is not the http(s) URL of a binary cache, e.g. https://cache.nixos.org", cfg.URL)
	}
	up := &upstream{base: raw, keep: cfg.Keep, sign: cfg.Sign, timeout: cfg.Timeout}
	if up.timeout <= 0 {
		up.timeout = defaultUpstreamTimeout
	}
	if len(cfg.TrustedPublicKeys) == 0 {
		return nil, fmt.Errorf("upstream %s: give the keys its narinfo is signed by with trusted_public_key, e.g. cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", raw)
	}
	for _, text := range cfg.TrustedPublicKeys {
		key, err := signature.ParsePublicKey(strings.TrimSpace(text))
		if err != nil {
			return nil, fmt.Errorf("upstream %s: trusted_public_key %q: %w", raw, text, err)
		}
		up.keys = append(up.keys, key)
	}
	dialer := &net.Dialer{Timeout: up.timeout}
	up.client = &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   up.timeout,
		ResponseHeaderTimeout: up.timeout,
	}}
	return up, nil
}

func (u *upstream) close() { u.client.CloseIdleConnections() }

// get asks the upstream for rel, a path relative to its URL with its
// query. Anything but a 200 (or a 206 to a Range) is errUpstreamMiss for
// the answers caches give for what they do not have, and an error
// otherwise.
func (u *upstream) get(ctx context.Context, rel string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.base+"/"+rel, nil)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"Range", "If-Range"} {
		if value := header.Get(name); value != "" {
			req.Header.Set(name, value)
		}
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.base, err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
		return resp, nil
	case http.StatusNotFound, http.StatusForbidden, http.StatusGone:
		// S3 answers 403 for a key that is not there.
		_ = resp.Body.Close()
		return nil, errUpstreamMiss
	}
	_ = resp.Body.Close()
	return nil, fmt.Errorf("upstream %s answered %s for %s", u.base, resp.Status, rel)
}

// narInfo fetches the narinfo of the path whose hash part is hash and
// checks it: a path of storeDir with that hash, a NAR hash and size, and a
// valid signature by one of the upstream's trusted keys.
func (u *upstream) narInfo(ctx context.Context, storeDir, hash string) (*narinfo.NarInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	resp, err := u.get(ctx, hash+".narinfo", nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, nixfmt.MaxNarInfoSize+1))
	if err != nil {
		return nil, fmt.Errorf("upstream %s: reading %s.narinfo: %w", u.base, hash, err)
	}
	if len(data) > nixfmt.MaxNarInfoSize {
		return nil, fmt.Errorf("upstream %s: %s.narinfo is larger than %d bytes", u.base, hash, nixfmt.MaxNarInfoSize)
	}
	info, err := nixfmt.ParseNarInfo(data)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %s.narinfo: %w", u.base, hash, err)
	}
	if err := checkUpstreamNarInfo(info, storeDir, hash); err != nil {
		return nil, fmt.Errorf("upstream %s: %s.narinfo: %w", u.base, hash, err)
	}
	if !u.signed(info) {
		return nil, fmt.Errorf("upstream %s: %s.narinfo carries no valid signature by a trusted key (%s)", u.base, hash, u.keyNames())
	}
	return info, nil
}

// checkUpstreamNarInfo checks what a client relies on in a narinfo that
// the signature does not cover, or that a client would not check.
func checkUpstreamNarInfo(info *narinfo.NarInfo, storeDir, hash string) error {
	if err := nixfmt.CheckPath(info, storeDir, hash); err != nil {
		return err
	}
	if info.NarHash == nil || info.NarHash.Algo() != nixhash.SHA256 || info.NarSize == 0 {
		return errors.New("it has no sha256 NarHash and NarSize")
	}
	if info.URL == "" || strings.HasPrefix(info.URL, "/") || strings.Contains(info.URL, "..") {
		return fmt.Errorf("URL %q is not a NAR's", info.URL)
	}
	if _, ok := nixfmt.NarCompressions[info.Compression]; !ok {
		return fmt.Errorf("compression %q is not one this cache reads", info.Compression)
	}
	return nil
}

// signed reports whether one of the narinfo's signatures is a trusted
// key's and valid.
func (u *upstream) signed(info *narinfo.NarInfo) bool {
	message := nixfmt.Fingerprint(info)
	for _, sig := range info.Signatures {
		for _, key := range u.keys {
			if sig.Name == key.Name && key.Verify(message, sig) {
				return true
			}
		}
	}
	return false
}

func (u *upstream) keyNames() string {
	names := make([]string, len(u.keys))
	for i, key := range u.keys {
		names[i] = key.Name
	}
	return strings.Join(names, ", ")
}

// upstreamNarinfo is a narinfo an upstream served, remembered by its
// NAR's URL so that the NAR can be checked against it, and kept, when a
// client asks for it.
type upstreamNarinfo struct {
	from *upstream
	info *narinfo.NarInfo
}

const maxUpstreamNarinfos = 65536
