package s3

import (
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchStall watches a connection handed over to a reader that moves its
// bytes in the kernel (splice(2)), where no read of the node's returns
// until the bytes run out: when the connection has received nothing for
// stallTimeout while nothing waited in it to be read, it sets a read
// deadline in the past, so that the read ends with an error and the
// reader resumes the object from the byte it reached. A connection whose
// bytes wait in it is one whose reader is slow, not a stalled server.
//
// The watch starts at the first look, at most stallTimeout/4 after the
// connection is handed over, so a stall is seen within 5/4 of
// stallTimeout. stop ends the watch.
func watchStall(conn *net.TCPConn) (stop func()) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return func() {}
	}
	w := &watchedConn{conn: conn, raw: raw}
	stalls.add(w)
	return func() { stalls.remove(w) }
}

// stalls watches every connection handed over, in one goroutine that runs
// while there are any, so that a handed-over connection (one per NAR
// served from the bucket) costs a map entry rather than a goroutine and
// a timer of its own.
var stalls = stallWatch{conns: make(map[*watchedConn]struct{}), faster: make(chan struct{}, 1)}

type stallWatch struct {
	mu    sync.Mutex
	conns map[*watchedConn]struct{}
	// running is whether the watching goroutine runs, and every how long
	// it looks.
	running bool
	every   time.Duration
	// faster tells the goroutine that stallTimeout shortened.
	faster chan struct{}
}

// watchedConn is a connection watched for a stall, and what the last
// look at it saw.
type watchedConn struct {
	conn *net.TCPConn
	raw  syscall.RawConn
	// received is how many bytes it had received at the last look, and
	// since is when that count last moved: zero before the first look.
	received uint64
	since    time.Time
}

func (s *stallWatch) add(w *watchedConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[w] = struct{}{}
	switch every := stallTimeout / 4; {
	case !s.running:
		s.running, s.every = true, every
		go s.watch()
	case every < s.every:
		s.every = every
		select {
		case s.faster <- struct{}{}:
		default:
		}
	}
}

func (s *stallWatch) remove(w *watchedConn) {
	s.mu.Lock()
	delete(s.conns, w)
	s.mu.Unlock()
}

// watch looks at the watched connections every stallTimeout/4, and ends
// when there are none left to watch.
func (s *stallWatch) watch() {
	s.mu.Lock()
	timer := time.NewTimer(s.every)
	s.mu.Unlock()
	defer timer.Stop()
	var watched []*watchedConn
	for {
		select {
		case <-s.faster:
			s.mu.Lock()
			timer.Reset(s.every)
			s.mu.Unlock()
			continue
		case <-timer.C:
		}
		now := time.Now()
		s.mu.Lock()
		timer.Reset(s.every)
		if len(s.conns) == 0 {
			s.running = false
			s.mu.Unlock()
			return
		}
		watched = watched[:0]
		for w := range s.conns {
			watched = append(watched, w)
		}
		s.mu.Unlock()
		for _, w := range watched {
			if !w.look(now) {
				s.remove(w)
			}
		}
	}
}

// look takes a look at the connection at now, and reports whether to go
// on watching it: not once it is closed, or its deadline set.
func (w *watchedConn) look(now time.Time) bool {
	received, queued, ok := progress(w.raw)
	switch {
	case !ok:
		return false
	case w.since.IsZero() || received != w.received || queued > 0:
		w.received, w.since = received, now
	case now.Sub(w.since) >= stallTimeout:
		_ = w.conn.SetReadDeadline(time.Unix(1, 0))
		return false
	}
	return true
}

// progress reads how many bytes conn has received (TCP_INFO) and how many
// of them wait to be read (SIOCINQ); ok is false once conn is closed.
func progress(raw syscall.RawConn) (received uint64, queued int, ok bool) {
	var err error
	ctrlErr := raw.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err != nil {
			return
		}
		received = info.Bytes_received
		queued, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return received, queued, ctrlErr == nil && err == nil
}
