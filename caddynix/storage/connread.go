package storage

import (
	"context"
	"io"
	"net"
)

// ConnReader is an Object whose bytes can come straight off a network
// connection of their own, so that a server can hand that connection to
// the kernel, which moves the bytes into a client's connection (splice(2))
// without copying them through user space.
type ConnReader interface {
	Object
	// ReadConn returns the next n bytes from the read position as they
	// come off a connection, or nil when they must be Read instead. The
	// read position moves only when the caller seeks past what it took,
	// and asking again from where a part was cut resumes the object, as
	// Read does, until a cut comes too many times in a row at the same
	// byte.
	ReadConn(n int64) (*ConnPart, error)
}

// ConnPart is bytes of an object on their way off a network connection:
// Read, already read off it, then the rest of them on Conn. The caller
// reads Source and then calls Done, once.
type ConnPart struct {
	// Read are the first bytes, already read off Conn; they stay valid
	// until Done.
	Read []byte
	// Conn carries the rest: Rest bytes.
	Conn *net.TCPConn
	Rest int64
	// Ends is whether Conn ends with the part; otherwise it goes on, kept
	// open for another request (under a context from WithConnReads with
	// keepOpen), and must be read no further than Rest bytes.
	Ends bool
	// done is Done's work.
	done func(whole bool)
}

// NewConnPart is a part of read and the rest bytes conn carries after it,
// and then ends if ends says so. done is told whether the caller took
// them all.
func NewConnPart(read []byte, conn *net.TCPConn, rest int64, ends bool, done func(whole bool)) *ConnPart {
	return &ConnPart{Read: read, Conn: conn, Rest: rest, Ends: ends, done: done}
}

// Source is what the rest of the part is read from: Conn itself when it
// ends with the part, or exactly Rest bytes of it, in an io.LimitedReader
// that Go splices through.
func (p *ConnPart) Source() io.Reader {
	if p.Ends {
		return p.Conn
	}
	return &io.LimitedReader{R: p.Conn, N: p.Rest}
}

// Done gives the connection back: whole says whether every byte of the
// part was taken off it, and only then may a connection kept open serve
// another request; any other is closed.
func (p *ConnPart) Done(whole bool) {
	p.done(whole)
}

type connReadsKey struct{}

// WithConnReads returns a copy of ctx under which a Store's Open may
// return a ConnReader. Only a reader that reads the object once, from its
// start, and hands the connection to the kernel gains from it. keepOpen
// says whether the reader can take a part that ends before its connection
// does (ConnPart.Rest): one that reads no further than Source gives, which
// lets the connection serve the next request rather than cost a connect
// for every object.
func WithConnReads(ctx context.Context, keepOpen bool) context.Context {
	return context.WithValue(ctx, connReadsKey{}, connReads{keepOpen: keepOpen})
}

type connReads struct{ keepOpen bool }

// ConnReadsWanted reports whether ctx comes from WithConnReads, and with
// what keepOpen.
func ConnReadsWanted(ctx context.Context) (wanted, keepOpen bool) {
	reads, wanted := ctx.Value(connReadsKey{}).(connReads)
	return wanted, reads.keepOpen
}
