package transform

import (
	"encoding/binary"
	"math/bits"
)

// skipPlain returns the index of the first byte of b at or after i that a JSON string scanner must look at: a
// quote, a backslash, a control character or a byte of a multi-byte UTF-8 sequence; or, when the eight-byte
// words from i hold none, the index where fewer than eight bytes are left. It tests eight bytes at a time: FHIR
// strings are mostly plain ASCII (codes, ids, URLs, display text), and both scanners spent most of their time
// stepping over such bytes one by one.
func skipPlain(b []byte, i int) int {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	for i+8 <= len(b) {
		x := binary.LittleEndian.Uint64(b[i:])
		q := x ^ ('"' * lo)
		s := x ^ ('\\' * lo)
		// A byte of q or s is zero at a quote or backslash; x-0x20 borrows at a control character; x's high
		// bit is set past ASCII. Borrows only carry upwards, so the lowest flagged byte is a real one.
		if m := ((q - lo) &^ q) | ((s - lo) &^ s) | ((x - 0x20*lo) &^ x) | x; m&hi != 0 {
			return i + bits.TrailingZeros64(m&hi)/8
		}
		i += 8
	}
	return i
}
