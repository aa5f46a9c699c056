package harness

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FaultProxy is a TCP proxy on loopback between a client and a server
// that injects faults into what the server sends back: connections reset
// or stalled after some bytes of the answer, and added latency. Setting a
// fault drops the open connections, so that every connection from then on
// has it. It can also keep a copy of what the server sends (Record).
type FaultProxy struct {
	Addr     string
	upstream string
	listener net.Listener

	// resetEvery cuts every n-th connection (0: none) after resetAfter
	// bytes from the server, with a TCP reset or a stall, counting from
	// the first connection after resetBase.
	resetEvery atomic.Int64
	resetBase  atomic.Int64
	resetAfter atomic.Int64
	// stall holds a connection open without a byte more where it would
	// be reset.
	stall   atomic.Bool
	latency atomic.Int64 // added before the first byte of each answer, in ns

	connections atomic.Int64
	// Resets counts the connections the proxy cut.
	Resets atomic.Int64
	// Stalled counts the connections the proxy stalled.
	Stalled atomic.Int64

	recording atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]bool
	// sent is what the server sent while recording, under mu.
	sent []byte
	wg   sync.WaitGroup
}

// StartFaultProxy proxies a new loopback port to upstream (host:port) until
// the test ends.
func StartFaultProxy(t testing.TB, upstream string) *FaultProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &FaultProxy{Addr: l.Addr().String(), upstream: upstream, listener: l, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// ResetConnections cuts the next connection and every n-th one after it
// (n 0: none) once it has passed after bytes of the server's answers.
func (p *FaultProxy) ResetConnections(every int, after int64) {
	p.cutConnections(every, after, false)
}

// StallConnections stalls the next connection and every n-th one after it
// (n 0: none) once it has passed after bytes of the server's answers: the
// proxy sends nothing more on it, and keeps it open until the client
// closes it.
func (p *FaultProxy) StallConnections(every int, after int64) {
	p.cutConnections(every, after, true)
}

func (p *FaultProxy) cutConnections(every int, after int64, stall bool) {
	p.resetBase.Store(p.connections.Load())
	p.stall.Store(stall)
	p.resetEvery.Store(int64(every))
	p.resetAfter.Store(after)
	p.dropOpen()
}

// Delay adds latency before the server's answer on new connections.
func (p *FaultProxy) Delay(d time.Duration) {
	p.latency.Store(int64(d))
	p.dropOpen()
}

// dropOpen closes the open connections.
func (p *FaultProxy) dropOpen() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Record keeps a copy of everything the server sends from now on, on every
// connection, for Sent: to read how a server cut a body into TLS records
// (CheckFullTLSRecords), a test records one connection.
func (p *FaultProxy) Record() { p.recording.Store(true) }

// Sent is a copy of what the server sent while recording.
func (p *FaultProxy) Sent() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.sent)
}

func (p *FaultProxy) record(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent = append(p.sent, b...)
}

// Heal stops injecting faults.
func (p *FaultProxy) Heal() {
	p.ResetConnections(0, 0)
	p.Delay(0)
}

func (p *FaultProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.listener.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(client)
		}()
	}
}

func (p *FaultProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	for _, c := range conns {
		p.conns[c] = true
	}
	return true
}

func (p *FaultProxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.conns, c)
	}
}

func (p *FaultProxy) serve(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return
	}
	defer server.Close()
	if !p.track(client, server) {
		return
	}
	defer p.untrack(client, server)
	n := p.connections.Add(1)
	cutAfter := int64(-1)
	if every := p.resetEvery.Load(); every > 0 && (n-p.resetBase.Load()-1)%every == 0 {
		cutAfter = p.resetAfter.Load()
	}
	stall := p.stall.Load()
	latency := time.Duration(p.latency.Load())

	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		_, _ = io.Copy(server, client)
		if tcp, ok := server.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	var sent int64
	first := true
	for {
		read, err := server.Read(buf)
		if read > 0 {
			if first && latency > 0 {
				time.Sleep(latency)
			}
			first = false
			chunk := buf[:read]
			if cutAfter >= 0 && sent+int64(read) > cutAfter {
				chunk = chunk[:cutAfter-sent]
			}
			if _, werr := client.Write(chunk); werr != nil {
				return
			}
			if p.recording.Load() {
				p.record(chunk)
			}
			sent += int64(len(chunk))
			if cutAfter >= 0 && sent >= cutAfter {
				if stall {
					p.Stalled.Add(1)
					<-clientDone
					return
				}
				p.Resets.Add(1)
				if tcp, ok := client.(*net.TCPConn); ok {
					_ = tcp.SetLinger(0) // a reset, not an orderly end
				}
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tcp, ok := client.(*net.TCPConn); ok {
					_ = tcp.CloseWrite()
				}
			}
			return
		}
	}
}

func (p *FaultProxy) close() {
	_ = p.listener.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// HTTPFaultProxy is a reverse proxy on loopback in front of an HTTP server
// (an S3 server) that answers some requests with an error status itself,
// delays answers, or holds every request until healed.
type HTTPFaultProxy struct {
	URL string

	mu       sync.Mutex
	status   int // the error status answered, 0: none
	every    int // to every n-th request
	latency  time.Duration
	stalled  chan struct{} // closed when healed; nil: not stalled
	requests int
	Injected atomic.Int64 // requests answered with the error status
	Stalls   atomic.Int64 // requests held by a stall
}

// StartHTTPFaultProxy proxies to target (http://host:port) until the test
// ends.
func StartHTTPFaultProxy(t testing.TB, target string) *HTTPFaultProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &HTTPFaultProxy{}
	reverse := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests++
		status := 0
		if p.status != 0 && p.every > 0 && p.requests%p.every == 0 {
			status = p.status
		}
		latency, stalled := p.latency, p.stalled
		p.mu.Unlock()
		if stalled != nil {
			p.Stalls.Add(1)
			select {
			case <-stalled:
			case <-r.Context().Done():
				return
			}
		}
		if latency > 0 {
			time.Sleep(latency)
		}
		if status != 0 {
			p.Injected.Add(1)
			http.Error(w, "injected fault", status)
			return
		}
		reverse.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.Heal()
		srv.Close()
	})
	p.URL = srv.URL
	return p
}

// Fail answers every n-th request with status.
func (p *HTTPFaultProxy) Fail(status, every int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.every = status, every
}

// Delay adds latency before every answer.
func (p *HTTPFaultProxy) Delay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// Stall holds every request until Heal.
func (p *HTTPFaultProxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled == nil {
		p.stalled = make(chan struct{})
	}
}

// Heal ends every fault and lets held requests go on.
func (p *HTTPFaultProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.every, p.latency = 0, 0, 0
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
}
