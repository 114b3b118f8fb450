package reader

import (
	"bytes"
	"strings"
	"testing"
	"testing/iotest"
)

// reference splits data the simple way, holding everything in memory: the behaviour Scanner must match.
func reference(data []byte, max int) []got {
	var out []got
	var off int64
	if bytes.HasPrefix(data, utf8BOM) {
		data, off = data[len(utf8BOM):], int64(len(utf8BOM))
	}
	parts := bytes.Split(data, []byte("\n"))
	if len(parts[len(parts)-1]) == 0 {
		parts = parts[:len(parts)-1] // the stream ended with a newline
	}
	for i, p := range parts {
		text := bytes.TrimSuffix(p, []byte("\r"))
		if len(bytes.Trim(text, " \t\r")) > 0 {
			g := got{Number: int64(i + 1), Offset: off, Length: int64(len(text))}
			if len(text) > max {
				g.Oversize = true
			} else {
				g.Text = string(text)
			}
			out = append(out, g)
		}
		off += int64(len(p)) + 1
	}
	return out
}

func FuzzScanner(f *testing.F) {
	seeds := []string{
		"", "\n", "a", "a\nb", "a\r\n\r\nb\r", "\xEF\xBB\xBF", "\xEF\xBB\xBFabcdefghijkl\r\n  \n",
		"abc\rdef\n", "\r\r\n", strings.Repeat("x", 100) + "\n" + strings.Repeat(" ", 50) + "\ny",
	}
	for _, s := range seeds {
		for _, max := range []uint8{1, 3, 8, 64} {
			f.Add([]byte(s), max)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, max uint8) {
		limit := int(max)%64 + 1
		want := reference(data, limit)
		for _, shape := range readerShapes {
			s := NewScanner(shape.wrap(iotest.HalfReader(bytes.NewReader(data))), "f", Options{MaxLineBytes: limit})
			out := collect(t, s, "f")
			if s.Err() != nil {
				t.Fatalf("%s: Err: %v", shape.name, s.Err())
			}
			if !equalGot(out, want) {
				t.Fatalf("%s: max %d, data %q\n got %+v\nwant %+v", shape.name, limit, data, out, want)
			}
		}
	})
}
