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

// FuzzBlockScanner: whatever the bytes and the layout, a BlockScanner returns exactly the plain Scanner's lines
// (the headers it takes out aside), in order and byte for byte; blocks are numbered in order with positions counting
// from 0; a per-type read has no block; issues stay within MaxIssues and name the object.
func FuzzBlockScanner(f *testing.F) {
	seeds := []string{
		"",
		`{"resourceType":"Patient","id":"a"}` + "\n" + `{"resourceType":"Observation","id":"o"}` + "\n",
		`{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/a"}}]}` + "\n" +
			`{"resourceType":"Patient","id":"a"}` + "\n" + `{"resourceType":"Encounter"}` + "\n",
		`{"resourceType":"Observation"}` + "\n" + `{"resourceType":"Patient"}` + "\n" + `{"resourceType":"Patient","id":"b"`,
		`{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/x"}}]}` + "\n\n" +
			`{"resourceType":"Patient","id":"y"}` + "\r\n",
		"\xef\xbb\xbf{\"resourceType\":\"Patient\",\"id\":\"\\u0061\"}\n[1]\n{\"resourceType\":1}\n",
	}
	for _, s := range seeds {
		for _, mode := range []uint8{0, 1, 2, 7} {
			f.Add([]byte(s), mode)
		}
	}
	layouts := []Layout{LayoutAuto, LayoutType, LayoutPatient}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		layout := layouts[int(mode)%len(layouts)]
		opts := BlockOptions{Layout: layout, SniffLines: 1 + int(mode>>2)%4, SniffBytes: 64 + int(mode>>4)*16, MaxIssues: 2}
		max := 48
		plain := NewScanner(bytes.NewReader(data), "f", Options{MaxLineBytes: max})
		var want []Line
		for plain.Scan() {
			l := plain.Line()
			l.Bytes = bytes.Clone(l.Bytes)
			want = append(want, l)
		}
		bs := NewBlockScanner(NewScanner(iotest.HalfReader(bytes.NewReader(data)), "f", Options{MaxLineBytes: max}), opts)
		var block, pos int64
		i := 0
		for bs.Scan() {
			l := bs.Line()
			for i < len(want) && want[i].Number != l.Number { // a header taken out
				i++
			}
			if i == len(want) {
				t.Fatalf("line %d is not a line of the plain Scanner", l.Number)
			}
			w := want[i]
			i++
			if !bytes.Equal(l.Bytes, w.Bytes) || l.Offset != w.Offset || l.Oversize != w.Oversize || l.Length != w.Length {
				t.Fatalf("line %d: %+v, plain %+v", l.Number, l.Line, w)
			}
			switch {
			case l.Block == 0 && block == 0: // before any block, or a per-type read
			case l.Block == 0:
				t.Fatalf("line %d in no block after block %d", l.Number, block)
			case l.Block > block:
				block, pos = l.Block, 0
			case l.Block == block && block > 0:
				pos++
			default:
				t.Fatalf("line %d: block %d after block %d", l.Number, l.Block, block)
			}
			if l.Position != pos && l.Block > 0 {
				t.Fatalf("line %d: position %d, want %d", l.Number, l.Position, pos)
			}
		}
		if bs.Err() != nil {
			t.Fatalf("Err: %v", bs.Err())
		}
		if got := bs.Lines() + bs.Headers(); got != int64(len(want)) {
			t.Fatalf("%d lines and %d headers, the plain Scanner read %d lines", bs.Lines(), bs.Headers(), len(want))
		}
		if bs.Layout() == LayoutType && (block != 0 || bs.Blocks() != 0) {
			t.Fatalf("per-type read with %d blocks", bs.Blocks())
		}
		if block > bs.Blocks() {
			t.Fatalf("line in block %d of %d", block, bs.Blocks())
		}
		issues, total := bs.Issues()
		if len(issues) > 2 || total < int64(len(issues)) {
			t.Fatalf("%d issues kept of %d", len(issues), total)
		}
		for _, is := range issues {
			if is.Key != "f" || is.Reason == "" {
				t.Fatalf("issue %+v", is)
			}
		}
	})
}
