package caddystatus

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

//go:embed assets
var assets embed.FS

var page = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"bytes":      func(n int64) string { return humanize.IBytes(uint64(max(n, 0))) },
	"clock":      clock,
	"rfc3339":    func(t any) string { return timeOf(t).UTC().Format(time.RFC3339) },
	"ago":        ago,
	"duration":   duration,
	"shortRef":   shortRef,
	"stateClass": func(state string) string { return strings.ReplaceAll(state, " ", "-") },
	"hitRate":    hitRate,
	"sub":        func(a, b int) int { return a - b },
	// rows hands a row template its rows and the time of the snapshot.
	"rows": func(rows any, now time.Time) map[string]any {
		return map[string]any{"Rows": rows, "Now": now}
	},
	"percent": func(n, of int64) string {
		if of <= 0 {
			return ""
		}
		return fmt.Sprintf("%.0f%%", 100*float64(n)/float64(of))
	},
}).ParseFS(assets, "assets/page.html"))

// render writes the page, or with name "main" its main part.
func (h *Handler) render(name string, view pageView) ([]byte, error) {
	var body bytes.Buffer
	if err := page.ExecuteTemplate(&body, name, view); err != nil {
		return nil, fmt.Errorf("rendering the status page: %w", err)
	}
	return body.Bytes(), nil
}

// servePage answers the whole page.
func (h *Handler) servePage(w http.ResponseWriter, r *http.Request) error {
	body, err := h.render("page.html", arrange(h.gather(r.Context()), time.Duration(h.Refresh)))
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(body)
	return err
}

// serveAsset answers the page's stylesheet and script.
func serveAsset(w http.ResponseWriter, r *http.Request, name string) error {
	types := map[string]string{"status.css": "text/css; charset=utf-8", "status.js": "text/javascript; charset=utf-8"}
	contentType, ok := types[name]
	if !ok {
		return caddyhttp.Error(http.StatusNotFound, fmt.Errorf("the status page has no asset %q", name))
	}
	data, err := assets.ReadFile("assets/" + name)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
	return nil
}

// timeOf takes a time or a pointer to one, as the snapshot holds both.
func timeOf(t any) time.Time {
	switch t := t.(type) {
	case time.Time:
		return t
	case *time.Time:
		if t != nil {
			return *t
		}
	}
	return time.Time{}
}

func clock(t any) string {
	return timeOf(t).UTC().Format("2006-01-02 15:04:05 UTC")
}

// ago says how long before now t was, or how long after.
func ago(now time.Time, t any) string {
	at := timeOf(t)
	if at.IsZero() {
		return "never"
	}
	d := now.Sub(at)
	if d < 0 {
		return "in " + duration(-d)
	}
	return duration(d) + " ago"
}

// duration rounds d to what a reader needs.
func duration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	default:
		return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}

// shortRef shows a branch or tag by its name.
func shortRef(ref string) string {
	for _, prefix := range []string{"refs/heads/", "refs/tags/"} {
		if name, ok := strings.CutPrefix(ref, prefix); ok {
			return name
		}
	}
	return ref
}
