package caddynix

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/cargoxx-pkgs/runner/caddynix/storage"
	"github.com/dustin/go-humanize"
)

// statsTTL is how long the landing page's path count and size are reused:
// counting walks the whole cache directory.
const statsTTL = 30 * time.Second

// cacheStats is what the landing page says about the cache's content.
type cacheStats struct {
	Paths    int
	NarBytes int64
}

type statsCache struct {
	mu    sync.Mutex
	at    time.Time
	stats cacheStats
}

// get returns the cache's statistics, counting again when they are older
// than statsTTL.
func (s *statsCache) get(ctx context.Context, store storage.Store) cacheStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.at) < statsTTL && !s.at.IsZero() {
		return s.stats
	}
	var stats cacheStats
	if entries, err := store.List(ctx, ""); err == nil {
		for _, e := range entries {
			if strings.HasSuffix(e.Name, ".narinfo") {
				stats.Paths++
			}
		}
	}
	if nars, err := store.List(ctx, "nar"); err == nil {
		for _, nar := range nars {
			stats.NarBytes += nar.Size
		}
	}
	s.stats, s.at = stats, time.Now()
	return stats
}

// landingPage is what the landing page shows.
type landingPage struct {
	Name       string
	URL        string
	PublicKeys []string
	Paths      int
	Size       string
	StoreDir   string
	Priority   int
	// Retention says what retention keeps the cache to, or is empty.
	Retention string
	// Sources are what else answers, in order, after the cache itself.
	Sources []string
	// ClientKeys are the keys a client trusts to use the cache.
	ClientKeys []string
}

// NixConf is the nix.conf snippet that makes a client use this cache.
func (p landingPage) NixConf() string {
	return fmt.Sprintf("extra-substituters = %s\nextra-trusted-public-keys = %s\n", p.URL, strings.Join(p.ClientKeys, " "))
}

var landingHTML = template.Must(template.New("landing").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Name}}: Nix binary cache</title>
<style>body{font-family:sans-serif;max-width:48em;margin:2em auto;padding:0 1em}pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style>
</head>
<body>
<h1>{{.Name}}</h1>
<p>A Nix binary cache with {{.Paths}} store paths ({{.Size}} of NARs), store directory <code>{{.StoreDir}}</code>, priority {{.Priority}}.</p>
{{if .Retention}}<p>Retention: {{.Retention}}.</p>{{end}}
{{if .Sources}}<p>Also answers, in order:</p><ul>{{range .Sources}}<li>{{.}}</li>{{end}}</ul>{{end}}
<h2>Public keys</h2>
{{if .PublicKeys}}<ul>{{range .PublicKeys}}<li><code>{{.}}</code></li>{{end}}</ul>{{else}}<p>This cache has no signing key: its paths are unsigned.</p>{{end}}
<h2>Use it</h2>
<p>Add to <code>nix.conf</code>:</p>
<pre>{{.NixConf}}</pre>
</body>
</html>
`))

// serveLanding answers the cache's root: HTML for browsers, plain text for
// everything else (curl).
func (h *Handler) serveLanding(w http.ResponseWriter, r *http.Request) error {
	stats := h.stats.get(r.Context(), h.store)
	page := landingPage{
		Name:       h.cacheName(r),
		URL:        h.cacheURL(r),
		PublicKeys: h.publicKeyStrings(),
		Paths:      stats.Paths,
		Size:       humanize.IBytes(uint64(stats.NarBytes)),
		StoreDir:   h.StoreDir,
		Priority:   *h.Priority,
		Retention:  h.retentionSummary(stats.NarBytes),
		Sources:    h.sources.Names(),
		ClientKeys: h.clientKeys(),
	}
	var body bytes.Buffer
	if strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := landingHTML.Execute(&body, page); err != nil {
			return caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("rendering the landing page: %w", err))
		}
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		page.writeText(&body)
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(memoryBodyWriter{w}, r, "", time.Time{}, bytes.NewReader(body.Bytes()))
	return nil
}

// writeText writes the plain-text landing page.
func (p landingPage) writeText(w io.Writer) {
	_, _ = fmt.Fprintf(w, "%s: a Nix binary cache\n\npaths: %d\nsize: %s\nstore dir: %s\npriority: %d\n",
		p.Name, p.Paths, p.Size, p.StoreDir, p.Priority)
	if p.Retention != "" {
		_, _ = fmt.Fprintf(w, "retention: %s\n", p.Retention)
	}
	for _, source := range p.Sources {
		_, _ = fmt.Fprintf(w, "also answers: %s\n", source)
	}
	_, _ = fmt.Fprintln(w)
	if len(p.PublicKeys) == 0 {
		_, _ = fmt.Fprintf(w, "public keys: none (paths are unsigned)\n\n")
	} else {
		_, _ = fmt.Fprintf(w, "public keys:\n")
		for _, key := range p.PublicKeys {
			_, _ = fmt.Fprintf(w, "  %s\n", key)
		}
		_, _ = fmt.Fprintln(w)
	}
	_, _ = fmt.Fprintf(w, "nix.conf:\n%s", p.NixConf())
}

// retentionSummary says what the retention block keeps the cache to, with
// the share of max_size that size takes.
func (h *Handler) retentionSummary(size int64) string {
	r := h.Retention
	if r == nil {
		return ""
	}
	var parts []string
	if r.MaxSize > 0 {
		parts = append(parts, fmt.Sprintf("%s of max_size %s (%.0f%%)", humanize.IBytes(uint64(size)), humanize.IBytes(uint64(r.MaxSize)), 100*float64(size)/float64(r.MaxSize)))
	}
	if r.MaxAge > 0 {
		parts = append(parts, "paths unused for "+time.Duration(r.MaxAge).String()+" are deleted")
	}
	if len(parts) == 0 {
		return "collected every " + time.Duration(r.Interval).String()
	}
	return strings.Join(parts, "; ")
}

// cacheName is the configured name, or the host the request was sent to.
func (h *Handler) cacheName(r *http.Request) string {
	if h.Name != "" {
		return h.Name
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		return r.Host
	}
	return host
}

// cacheURL is the URL clients use as a substituter: the configured url, or
// the scheme and host of the request and the path the handler is mounted at.
func (h *Handler) cacheURL(r *http.Request) string {
	if h.url != "" {
		return h.url
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	prefix := ""
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		prefix = strings.TrimSuffix(strings.TrimSuffix(orig.URL.Path, r.URL.Path), "/")
	}
	return scheme + "://" + r.Host + prefix
}
