package s3

import (
	"context"
	"errors"
	"io"
	"time"
)

// stallTimeout is how long a read of an object's body waits for its next
// byte before it takes the stream for cut and resumes it from the byte it
// reached, as it does a stream the network cuts: an S3 server that stops
// sending in the middle of an answer, with the connection still open,
// would otherwise hold the node's client until the client gives up (Nix
// waits 300 s, its stalled-download-timeout).
var stallTimeout = 30 * time.Second

// errStalled is why a GET was given up in the middle of its body.
var errStalled = errors.New("the S3 server stopped sending in the middle of an answer")

// stallingBody is the body of a GET through the S3 client whose GET is
// cancelled when a read waits stallTimeout for a byte. Only the time spent
// inside Read counts, so that a slow reader is not taken for a stalled
// server.
type stallingBody struct {
	io.ReadCloser
	stalled *time.Timer
	cancel  context.CancelCauseFunc
}

// newStallingBody watches body, the body of a GET made under a context
// that cancel cancels.
func newStallingBody(body io.ReadCloser, cancel context.CancelCauseFunc) *stallingBody {
	stalled := time.AfterFunc(time.Hour, func() { cancel(errStalled) })
	stalled.Stop()
	return &stallingBody{ReadCloser: body, stalled: stalled, cancel: cancel}
}

func (b *stallingBody) Read(p []byte) (int, error) {
	b.stalled.Reset(stallTimeout)
	n, err := b.ReadCloser.Read(p)
	b.stalled.Stop()
	return n, err
}

func (b *stallingBody) Close() error {
	b.stalled.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}
