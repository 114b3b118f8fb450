package transform

import (
	"encoding/binary"
	"math/bits"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
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

// appendUnquoted appends the content s of a JSON string (the bytes between its quotes) to dst, unescaped as
// encoding/json unescapes it: a surrogate pair escaped as two \u escapes is one character, and a lone surrogate
// and a byte that is not UTF-8 become U+FFFD. It reports false where encoding/json would fail: a bad escape, a
// control character or a quote. Unlike json.Unmarshal into a string, it allocates only when dst must grow.
func appendUnquoted(dst, s []byte) ([]byte, bool) {
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '\\':
			if i+1 >= len(s) {
				return dst, false
			}
			switch e := s[i+1]; e {
			case '"', '\\', '/':
				dst = append(dst, e)
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r, ok := hex4(s, i+2)
				if !ok {
					return dst, false
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if i+1 < len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if r2, ok := hex4(s, i+2); ok {
							if d := utf16.DecodeRune(r, r2); d != unicode.ReplacementChar {
								dst = utf8.AppendRune(dst, d)
								i += 6
								continue
							}
						}
					}
					r = unicode.ReplacementChar
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default:
				return dst, false
			}
			i += 2
		case c == '"' || c < ' ':
			return dst, false
		case c < utf8.RuneSelf:
			j := i + 1
			for j < len(s) && s[j] >= ' ' && s[j] < utf8.RuneSelf && s[j] != '"' && s[j] != '\\' {
				j++
			}
			dst = append(dst, s[i:j]...)
			i = j
		default:
			r, size := utf8.DecodeRune(s[i:])
			dst = utf8.AppendRune(dst, r)
			i += size
		}
	}
	return dst, true
}
