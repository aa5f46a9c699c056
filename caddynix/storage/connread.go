package storage

import (
	"context"
	"net"
)

// ConnReader is an Object whose bytes can come straight off a network
// connection of their own, so that a server can hand that connection to
// the kernel, which moves the bytes into a client's connection (splice(2))
// without copying them through user space.
type ConnReader interface {
	Object
	// ReadConn returns the next n bytes from the read position: those
	// already read off the connection, and the connection, which carries
	// the rest of them and then ends. It returns a nil connection when the
	// bytes must be Read instead. The connection is the caller's to close.
	// The read position moves only when the caller seeks past what it
	// took, and asking again from where a connection was cut resumes the
	// object, as Read does, until a cut comes too many times in a row at
	// the same byte.
	ReadConn(n int64) (read []byte, conn *net.TCPConn, err error)
}

type connReadsKey struct{}

// WithConnReads returns a copy of ctx under which a Store's Open may
// return a ConnReader. Only a reader that reads the object once, from its
// start, and hands the connection to the kernel gains from it: a
// connection of its own costs a connect for every object.
func WithConnReads(ctx context.Context) context.Context {
	return context.WithValue(ctx, connReadsKey{}, true)
}

// ConnReadsWanted reports whether ctx comes from WithConnReads.
func ConnReadsWanted(ctx context.Context) bool {
	wanted, _ := ctx.Value(connReadsKey{}).(bool)
	return wanted
}
