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
func watchStall(conn *net.TCPConn) (stop func()) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(stallTimeout / 4)
		defer tick.Stop()
		received, _, ok := progress(raw)
		since := time.Now()
		for ok {
			select {
			case <-done:
				return
			case now := <-tick.C:
				var queued int
				var got uint64
				got, queued, ok = progress(raw)
				if got != received || queued > 0 {
					received, since = got, now
				} else if now.Sub(since) >= stallTimeout {
					_ = conn.SetReadDeadline(time.Unix(1, 0))
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
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
