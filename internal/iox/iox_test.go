package iox

import (
	"bytes"
	"testing"
)

func TestTailWriterHoldsBackTheEnd(t *testing.T) {
	data := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	for _, chunk := range []int{1, 3, 16, 17, 100} {
		var out bytes.Buffer
		w := &TailWriter{W: &out, Hold: 16}
		for rest := data; len(rest) > 0; {
			n := min(chunk, len(rest))
			if _, err := w.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if !bytes.Equal(out.Bytes(), data[:len(data)-16]) || w.Held() != 16 || w.N != int64(len(data)-16) {
			t.Errorf("chunks of %d: passed on %q, holding %d", chunk, out.Bytes(), w.Held())
		}
		if err := w.Release(); err != nil || !bytes.Equal(out.Bytes(), data) {
			t.Errorf("chunks of %d: after Release %q", chunk, out.Bytes())
		}
	}
}
