package transform

import (
	"bytes"
	"encoding/json"
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

// checkUnquoted compares appendUnquoted with json.Unmarshal on the JSON string "s": the same verdict and, when
// both take it, the same bytes.
func checkUnquoted(t *testing.T, s []byte) {
	t.Helper()
	var want string
	err := json.Unmarshal(append(append([]byte{'"'}, s...), '"'), &want)
	got, ok := appendUnquoted([]byte("prefix"), s)
	if ok != (err == nil) {
		t.Fatalf("appendUnquoted(%q): ok %v; json.Unmarshal: %v", s, ok, err)
	}
	if ok && !bytes.Equal(got, []byte("prefix"+want)) {
		t.Fatalf("appendUnquoted(%q) = %q, json.Unmarshal %q", s, got[len("prefix"):], want)
	}
}

// TestAppendUnquoted checks the escapes and the corner cases encoding/json resolves its own way: surrogate pairs,
// lone surrogates, bytes that are not UTF-8, control characters and bad escapes.
func TestAppendUnquoted(t *testing.T) {
	for _, s := range []string{
		``, `plain`, `a\"b\\c\/d`, `\b\f\n\r\t`, `\u00e9\u00C9`, `caf\u00e9 na\u00efve`, "d\u00e9j\u00e0 \u2603 \u6f22",
		`\ud83d\ude00`, `\ud83d`, `\ud83dx`, `\ude00\ud83d`, `\ud83d\u0041`, `\ud83d\ud83d\ude00`, `\ud83d\u12`,
		"\xff", "a\xc3", "\xc3\xa9", "\xed\xa0\x80", "\xf4\x90\x80\x80",
		"\x00", "a\nb", "\x1f", "\x7f", `"`, `a"b`, `\`, `\x`, `\'`, `\u12`, `\u12g4`, `\U1234`,
	} {
		checkUnquoted(t, []byte(s))
	}
}

// FuzzAppendUnquoted compares appendUnquoted with json.Unmarshal on any string content.
func FuzzAppendUnquoted(f *testing.F) {
	for _, s := range []string{`plain`, `a\"b`, `\ud83d\ude00`, `\ud83d`, "\xff\u00e9", `\u12g4`} {
		f.Add([]byte(s))
	}
	f.Fuzz(checkUnquoted)
}

// TestJSONString checks jsonString, which the reference path's sniffing and the duplicate-key check use on the
// spans of JSON strings, against json.Unmarshal where the string has escapes: the same string, and "" with false
// where it fails. (A span without a backslash it takes as is, trusting its caller's scanner.)
func TestJSONString(t *testing.T) {
	for _, raw := range []string{
		`""`, `"plain"`, `"a\"b\\c\/d"`, `"caf\u00e9"`, `"\ud83d\ude00"`, `"\ud83d"`, "\"\\u00e9\xff\"",
		`"a\u0041"b"`, `"\x"`, `"\u12"`, `"a\"`, `"a\\"`, "\"a\\n\nb\"",
	} {
		var want string
		err := json.Unmarshal([]byte(raw), &want)
		got, ok := jsonString([]byte(raw))
		if ok != (err == nil) || got != want {
			t.Errorf("jsonString(%s) = %q, %v; json.Unmarshal: %q, %v", raw, got, ok, want, err)
		}
	}
	for _, raw := range []string{``, `"`, `x`, `1`, `{"a":1}`} {
		if got, ok := jsonString([]byte(raw)); ok || got != "" {
			t.Errorf("jsonString(%s) = %q, %v; want \"\", false", raw, got, ok)
		}
	}
}
