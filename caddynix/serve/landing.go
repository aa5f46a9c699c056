package serve

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/internal/httpx"
	"github.com/dustin/go-humanize"
)

// LandingPage is what the landing page shows; Landing fills in Paths
// and Size.
type LandingPage struct {
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
	// LastPush is when a path was last pushed, zero if unknown. Who
	// pushed it is not shown: the page is public.
	LastPush time.Time
}

// LastPushText says when the last push was.
func (p LandingPage) LastPushText() string {
	if p.LastPush.IsZero() {
		return "none since the server started"
	}
	return p.LastPush.UTC().Format("2006-01-02 15:04:05 UTC")
}

// NixConf is the nix.conf snippet that makes a client use this cache.
func (p LandingPage) NixConf() string {
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
<p>Last push: {{.LastPushText}}.</p>
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

// writeText writes the plain-text landing page.
func (p LandingPage) writeText(w io.Writer) {
	_, _ = fmt.Fprintf(w, "%s: a Nix binary cache\n\npaths: %d\nsize: %s\nlast push: %s\nstore dir: %s\npriority: %d\n",
		p.Name, p.Paths, p.Size, p.LastPushText(), p.StoreDir, p.Priority)
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

// Landing answers the cache's root with page: HTML for browsers, plain
// text for everything else (curl).
func (c *Cache) Landing(w http.ResponseWriter, r *http.Request, page LandingPage) error {
	stats := c.stats.get(r.Context(), c.store)
	page.Paths, page.Size = stats.Paths, humanize.IBytes(uint64(stats.NarBytes))
	var body bytes.Buffer
	if strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := landingHTML.Execute(&body, page); err != nil {
			return httpx.Error(http.StatusInternalServerError, fmt.Errorf("rendering the landing page: %w", err))
		}
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		page.writeText(&body)
	}
	w.Header().Set("Cache-Control", "no-cache")
	Memory(w, r, time.Time{}, body.Bytes())
	return nil
}

// Stats are the size of the NARs the cache holds and its number of paths,
// as the landing page last counted them.
func (c *Cache) Stats(ctx context.Context) (narBytes int64, paths int) {
	stats := c.stats.get(ctx, c.store)
	return stats.NarBytes, stats.Paths
}
