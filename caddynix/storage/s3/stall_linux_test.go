package s3

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a loopback connection: the node's end and the server's.
func tcpPair(t *testing.T) (node *net.TCPConn, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(); _ = server.Close() })
	return c.(*net.TCPConn), server
}

// TestStallWatch: a handed-over connection on which nothing comes ends its
// reader's read within 5/4 of stallTimeout; one whose bytes wait unread
// is left alone; and the watch's goroutine ends with the last connection.
func TestStallWatch(t *testing.T) {
	defer func(timeout time.Duration) { stallTimeout = timeout }(stallTimeout)
	stallTimeout = 200 * time.Millisecond

	stalled, _ := tcpPair(t)
	slow, slowServer := tcpPair(t)
	if _, err := slowServer.Write([]byte("bytes its reader has not read yet")); err != nil {
		t.Fatal(err)
	}
	stopStalled, stopSlow := watchStall(stalled), watchStall(slow)
	start := time.Now()
	_, err := stalled.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read of a connection on which nothing came ended with %v, want a deadline", err)
	}
	if waited := time.Since(start); waited < stallTimeout {
		t.Fatalf("a stall was seen after %v, before stallTimeout (%v)", waited, stallTimeout)
	}
	time.Sleep(2 * stallTimeout)
	// A deadline the watch set would fail this read, bytes or not.
	if n, err := slow.Read(make([]byte, 64)); err != nil || n == 0 {
		t.Fatalf("a connection whose bytes waited to be read was taken for stalled: %d bytes, %v", n, err)
	}

	stopStalled()
	stopSlow()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stalls.mu.Lock()
		running := stalls.running
		stalls.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stall watch's goroutine runs on with no connection to watch")
		}
	}
}
