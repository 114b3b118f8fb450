package transform

import (
	"math/rand/v2"
	"testing"
)

// naiveSkipPlain is skipPlain's definition, one byte at a time.
func naiveSkipPlain(b []byte, i int) int {
	for ; i < len(b); i++ {
		if c := b[i]; c == '"' || c == '\\' || c < 0x20 || c >= 0x80 {
			return i
		}
	}
	return len(b)
}

// TestSkipPlain checks on random strings, dense and sparse in special bytes, that skipPlain stops exactly at the
// first special byte, or before it with fewer than eight bytes left.
func TestSkipPlain(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	specials := []byte{'"', '\\', 0, 0x1f, '\n', 0x80, 0xc3, 0xff}
	plain := []byte{' ', '!', '#', '[', ']', '~', 0x7f, 'a', '0', 0x21, 0x5b, 0x5d}
	for range 20000 {
		b := make([]byte, r.IntN(40))
		for j := range b {
			b[j] = plain[r.IntN(len(plain))]
			if r.IntN(12) == 0 {
				b[j] = specials[r.IntN(len(specials))]
			}
		}
		i := 0
		if len(b) > 0 {
			i = r.IntN(len(b))
		}
		want := naiveSkipPlain(b, i)
		got := skipPlain(b, i)
		if got > want || (got < want && got+8 <= len(b)) {
			t.Fatalf("skipPlain(%q, %d) = %d, first special byte at %d", b, i, got, want)
		}
	}
}
