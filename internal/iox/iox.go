// Package iox holds the small io pieces that the bundle's packages share.
package iox

import "io"

// CountingReader counts the bytes read through it in N.
type CountingReader struct {
	R io.Reader
	N int64
}

func (c *CountingReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}

// CountingWriter counts the bytes written through it in N.
type CountingWriter struct {
	W io.Writer
	N int64
}

func (c *CountingWriter) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.N += int64(n)
	return n, err
}

// TailWriter passes on what is written to it except its last Hold bytes,
// until Release: a stream whose end is only sent once it has been checked
// cannot be taken for a whole one when the check fails.
type TailWriter struct {
	W    io.Writer
	Hold int
	// N counts the bytes passed on to W.
	N    int64
	tail []byte
}

func (t *TailWriter) Write(p []byte) (int, error) {
	if len(p) >= t.Hold {
		if err := t.emit(t.tail); err != nil {
			return 0, err
		}
		if err := t.emit(p[:len(p)-t.Hold]); err != nil {
			return 0, err
		}
		t.tail = append(t.tail[:0], p[len(p)-t.Hold:]...)
		return len(p), nil
	}
	t.tail = append(t.tail, p...)
	if over := len(t.tail) - t.Hold; over > 0 {
		if err := t.emit(t.tail[:over]); err != nil {
			return 0, err
		}
		t.tail = append(t.tail[:0], t.tail[over:]...)
	}
	return len(p), nil
}

// Held is how many bytes are held back.
func (t *TailWriter) Held() int { return len(t.tail) }

// Release passes on the bytes held back.
func (t *TailWriter) Release() error {
	err := t.emit(t.tail)
	t.tail = t.tail[:0]
	return err
}

func (t *TailWriter) emit(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := t.W.Write(p)
	t.N += int64(n)
	return err
}
