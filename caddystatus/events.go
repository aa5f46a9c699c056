package caddystatus

import (
	"bytes"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// serveEvents streams the page's main part as server-sent events, one
// "update" event every refresh, until the browser leaves or the
// configuration ends. Each event's id is the time of its snapshot.
func (h *Handler) serveEvents(w http.ResponseWriter, r *http.Request) error {
	refresh := time.Duration(h.Refresh)
	rc := http.NewResponseController(w)
	// A write timeout of the server would cut the stream.
	_ = rc.SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprintf(w, "retry: %d\n\n", refresh.Milliseconds()); err != nil {
		return nil
	}
	ticker := time.NewTicker(refresh)
	defer ticker.Stop()
	shutdown := h.shuttingDown(r)
	for {
		snapshot := h.gather(r.Context())
		body, err := h.render("main", arrange(snapshot, refresh))
		if err != nil {
			h.logger.Error("rendering a status update", zap.Error(err))
			return nil
		}
		if _, err := w.Write(event("update", snapshot.Generated.UTC().Format(time.RFC3339), body)); err != nil {
			return nil // the browser went away
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-h.ctx.Done():
			return nil
		case <-shutdown:
			return nil
		case <-ticker.C:
		}
	}
}

// shuttingDown returns a channel closed when the server that took r
// begins to shut down: on exit, Caddy waits for open requests, and a
// stream would never end by itself. On a reload the configuration's end
// ends it.
func (h *Handler) shuttingDown(r *http.Request) <-chan struct{} {
	server, ok := r.Context().Value(http.ServerContextKey).(*http.Server)
	if !ok {
		return nil
	}
	done := make(chan struct{})
	existing, loaded := h.shutdowns.LoadOrStore(server, done)
	if !loaded {
		server.RegisterOnShutdown(func() { close(done) })
	}
	return existing.(chan struct{})
}

// event encodes one server-sent event: every line of data is a data
// field, so that the browser joins them with newlines again.
func event(name, id string, data []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "event: %s\nid: %s\n", name, id)
	for line := range bytes.Lines(data) {
		b.WriteString("data: ")
		b.Write(bytes.TrimRight(line, "\r\n"))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return b.Bytes()
}
