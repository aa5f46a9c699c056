package s3

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// idleConnTimeout is how long a connection to the S3 server that an
// answer left open waits for the node's next GET before it is closed:
// well within the idle timeouts after which S3 servers close connections
// themselves (a GET on one they closed is sent again on a new one).
const idleConnTimeout = 30 * time.Second

// maxIdleConns bounds the connections to the S3 server kept open between
// GETs: about as many as NARs in flight at once on a busy node.
const maxIdleConns = 64

// connPool holds the connections to the S3 server that an answer left
// open, read to the end of that answer, for the node's next GET on a
// connection of its own: accepting and closing a connection for every NAR
// costs the S3 server and the node more than the GET itself.
type connPool struct {
	mu sync.Mutex
	// idle are the connections waiting, the most recently used last.
	idle   []idleConn
	closed bool
	// dialed counts the connections made.
	dialed atomic.Int64
}

type idleConn struct {
	conn  *net.TCPConn
	br    *bufio.Reader
	since time.Time
}

// take returns the connection that waited the least, if one did, for no
// longer than idleConnTimeout.
func (p *connPool) take() (*net.TCPConn, *bufio.Reader, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropStale(time.Now())
	if len(p.idle) == 0 {
		return nil, nil, false
	}
	c := p.idle[len(p.idle)-1]
	p.idle = p.idle[:len(p.idle)-1]
	return c.conn, c.br, true
}

// put keeps conn, at the end of an answer with nothing of it left in br,
// for the next GET; a connection the pool has no room for is closed.
func (p *connPool) put(conn *net.TCPConn, br *bufio.Reader) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropStale(now)
	if p.closed || len(p.idle) == maxIdleConns {
		_ = conn.Close()
		return
	}
	p.idle = append(p.idle, idleConn{conn: conn, br: br, since: now})
}

// dropStale closes the connections that waited idleConnTimeout, the
// oldest first in idle.
func (p *connPool) dropStale(now time.Time) {
	stale := 0
	for stale < len(p.idle) && now.Sub(p.idle[stale].since) >= idleConnTimeout {
		_ = p.idle[stale].conn.Close()
		stale++
	}
	if stale > 0 {
		p.idle = append(p.idle[:0], p.idle[stale:]...)
	}
}

// close closes the connections waiting, and every one put from now on.
func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, c := range p.idle {
		_ = c.conn.Close()
	}
	p.idle = nil
}
