package reader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// got is a Line with its bytes as a string, for comparison.
type got struct {
	Number   int64
	Offset   int64
	Text     string
	Oversize bool
	Length   int64
}

func line(n, off int64, text string) got {
	return got{Number: n, Offset: off, Text: text, Length: int64(len(text))}
}

func oversize(n, off, length int64) got {
	return got{Number: n, Offset: off, Oversize: true, Length: length}
}

// collect scans s to the end, checking that every line carries key.
func collect(t *testing.T, s *Scanner, key string) []got {
	t.Helper()
	var out []got
	for s.Scan() {
		l := s.Line()
		if l.Key != key {
			t.Fatalf("line %d: key %q, want %q", l.Number, l.Key, key)
		}
		if l.Oversize != (l.Bytes == nil) {
			t.Fatalf("line %d: Oversize %v with %d bytes", l.Number, l.Oversize, len(l.Bytes))
		}
		if !l.Oversize && int64(len(l.Bytes)) != l.Length {
			t.Fatalf("line %d: Length %d, len(Bytes) %d", l.Number, l.Length, len(l.Bytes))
		}
		out = append(out, got{Number: l.Number, Offset: l.Offset, Text: string(l.Bytes), Oversize: l.Oversize, Length: l.Length})
	}
	return out
}

func equalGot(a, b []got) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// readerShapes feed the same bytes through readers that split them differently.
var readerShapes = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"whole", func(r io.Reader) io.Reader { return r }},
	{"one-byte", iotest.OneByteReader},
	{"half", iotest.HalfReader},
	{"data-err", iotest.DataErrReader},
}

func TestScanner(t *testing.T) {
	const bom = "\xEF\xBB\xBF"
	tests := []struct {
		name  string
		in    string
		max   int
		want  []got
		lines int64
	}{
		{name: "lf", in: "a\nbb\nccc\n", want: []got{line(1, 0, "a"), line(2, 2, "bb"), line(3, 5, "ccc")}},
		{name: "crlf", in: "a\r\nbb\r\n", want: []got{line(1, 0, "a"), line(2, 3, "bb")}},
		{name: "mixed terminators", in: "a\r\nb\nc\r\n", want: []got{line(1, 0, "a"), line(2, 3, "b"), line(3, 5, "c")}},
		{name: "bom", in: bom + "a\nb\n", want: []got{line(1, 3, "a"), line(2, 5, "b")}},
		{name: "bom only at stream start", in: "a\n" + bom + "b\n", want: []got{line(1, 0, "a"), line(2, 2, bom+"b")}},
		{name: "bom with crlf", in: bom + "{}\r\n", want: []got{line(1, 3, "{}")}},
		{
			name: "blank lines skipped but numbered",
			in:   "\n\na\n  \t\r\n\r\nb\n\n",
			want: []got{line(3, 2, "a"), line(6, 11, "b")},
		},
		{name: "whitespace kept inside a line", in: " {} \n", want: []got{line(1, 0, " {} ")}},
		{name: "no final newline", in: "a\nbc", want: []got{line(1, 0, "a"), line(2, 2, "bc")}},
		{name: "final cr without newline", in: "a\r", want: []got{line(1, 0, "a")}},
		{name: "empty", in: ""},
		{name: "only blank lines", in: "\n \n\r\n\t"},
		{name: "only bom", in: bom},
		{name: "partial bom is data", in: "\xEF\xBB", want: []got{line(1, 0, "\xEF\xBB")}},
		{
			name: "exact limit and one over",
			in:   "abcd\nabcde\nxy\n",
			max:  4,
			want: []got{line(1, 0, "abcd"), oversize(2, 5, 5), line(3, 11, "xy")},
		},
		{
			name: "exact limit with crlf",
			in:   "abcd\r\nabcde\r\nxy\r\n",
			max:  4,
			want: []got{line(1, 0, "abcd"), oversize(2, 6, 5), line(3, 13, "xy")},
		},
		{
			name: "oversize at end without newline",
			in:   "ab\nabcdefghij",
			max:  4,
			want: []got{line(1, 0, "ab"), oversize(2, 3, 10)},
		},
		{
			name: "oversize with crlf",
			in:   "abcdefghij\r\nz\n",
			max:  4,
			want: []got{oversize(1, 0, 10), line(2, 12, "z")},
		},
		{
			name: "oversize blank line skipped",
			in:   "a\n          \nb\n",
			max:  4,
			want: []got{line(1, 0, "a"), line(3, 13, "b")},
		},
		{
			name: "bom then oversize",
			in:   bom + "abcdefgh\nz",
			max:  4,
			want: []got{oversize(1, 3, 8), line(2, 12, "z")},
		},
		{
			name: "consecutive oversize",
			in:   "abcdefgh\nijklmnop\nq\n",
			max:  2,
			want: []got{oversize(1, 0, 8), oversize(2, 9, 8), line(3, 18, "q")},
		},
	}
	for _, tt := range tests {
		for _, shape := range readerShapes {
			t.Run(tt.name+"/"+shape.name, func(t *testing.T) {
				s := NewScanner(shape.wrap(strings.NewReader(tt.in)), "k.ndjson", Options{MaxLineBytes: tt.max})
				out := collect(t, s, "k.ndjson")
				if err := s.Err(); err != nil {
					t.Fatalf("Err: %v", err)
				}
				if !equalGot(out, tt.want) {
					t.Fatalf("lines\n got %+v\nwant %+v", out, tt.want)
				}
				if s.Lines() != int64(len(tt.want)) {
					t.Errorf("Lines() = %d, want %d", s.Lines(), len(tt.want))
				}
				if s.Scan() {
					t.Error("Scan after the end returned true")
				}
			})
		}
	}
}

// TestScannerLongLines checks lines longer than the initial buffer, under the limit and far over it.
func TestScannerLongLines(t *testing.T) {
	long := strings.Repeat("x", 3<<20) // 3 MiB
	mid := strings.Repeat("y", 200<<10)
	tests := []struct {
		name   string
		in     string
		max    int
		want   []got
		maxBuf int // the buffer never grows past this
		shapes bool
	}{
		{
			name:   "multi-MB line over a small limit",
			in:     "first\n" + long + "\n{\"a\":1}\n\nlast",
			max:    1 << 10,
			want:   []got{line(1, 0, "first"), oversize(2, 6, int64(len(long))), line(3, 6+int64(len(long))+1, "{\"a\":1}"), line(5, 6+int64(len(long))+1+8+1, "last")},
			maxBuf: initialBufferSize,
			shapes: true,
		},
		{
			name:   "multi-MB crlf line over a limit larger than the buffer",
			in:     long + "\r\nz\r\n",
			max:    1 << 20,
			want:   []got{oversize(1, 0, int64(len(long))), line(2, int64(len(long))+2, "z")},
			maxBuf: 1<<20 + 2,
		},
		{
			name:   "line longer than the buffer under the default limit",
			in:     "a\n" + mid + "\nb\n",
			want:   []got{line(1, 0, "a"), line(2, 2, mid), line(3, 2+int64(len(mid))+1, "b")},
			maxBuf: 256 << 10,
			shapes: true,
		},
		{
			name:   "line exactly at a limit larger than the buffer",
			in:     mid + "\r\n" + mid + "y\n",
			max:    200 << 10,
			want:   []got{line(1, 0, mid), oversize(2, int64(len(mid))+2, int64(len(mid))+1)},
			maxBuf: 200<<10 + 2,
		},
	}
	for _, tt := range tests {
		for _, shape := range readerShapes {
			if !tt.shapes && shape.name != "whole" {
				continue
			}
			t.Run(tt.name+"/"+shape.name, func(t *testing.T) {
				s := NewScanner(shape.wrap(strings.NewReader(tt.in)), "big", Options{MaxLineBytes: tt.max})
				out := collect(t, s, "big")
				if err := s.Err(); err != nil {
					t.Fatalf("Err: %v", err)
				}
				if !equalGot(out, tt.want) {
					t.Fatalf("got %d lines, want %d; first difference:\n%s", len(out), len(tt.want), firstDiff(out, tt.want))
				}
				if len(s.buf) > tt.maxBuf {
					t.Errorf("buffer grew to %d bytes, want at most %d", len(s.buf), tt.maxBuf)
				}
			})
		}
	}
}

func sprint(g got) string { return fmt.Sprintf("%+v", g) }

func firstDiff(a, b []got) string {
	short := func(g got) got {
		if len(g.Text) > 20 {
			g.Text = g.Text[:20] + "..."
		}
		return g
	}
	for i := range max(len(a), len(b)) {
		switch {
		case i >= len(a):
			return "missing " + sprint(short(b[i]))
		case i >= len(b):
			return "extra " + sprint(short(a[i]))
		case a[i] != b[i]:
			return "got " + sprint(short(a[i])) + " want " + sprint(short(b[i]))
		}
	}
	return "none"
}

// errAfter returns data, then err instead of io.EOF.
type errAfter struct {
	r   io.Reader
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		err = e.err
	}
	return n, err
}

func TestScannerReadError(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		in       string
		max      int
		want     []got
		wantLine string
	}{
		{name: "error mid line", in: "a\nb\npartial", want: []got{line(1, 0, "a"), line(2, 2, "b")}, wantLine: "line 3"},
		{name: "error after newline", in: "a\n\n", want: []got{line(1, 0, "a")}, wantLine: "line 3"},
		{name: "error inside oversize line", in: "a\nxxxxxxxxxx", max: 4, want: []got{line(1, 0, "a")}, wantLine: "line 2"},
		{name: "error before any byte", in: "", wantLine: "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewScanner(&errAfter{strings.NewReader(tt.in), boom}, "obj/k.ndjson", Options{MaxLineBytes: tt.max})
			out := collect(t, s, "obj/k.ndjson")
			if !equalGot(out, tt.want) {
				t.Fatalf("lines\n got %+v\nwant %+v", out, tt.want)
			}
			err := s.Err()
			if !errors.Is(err, boom) {
				t.Fatalf("Err = %v, want it to wrap boom", err)
			}
			if msg := err.Error(); !strings.Contains(msg, "obj/k.ndjson") || !strings.Contains(msg, tt.wantLine) {
				t.Errorf("Err = %q, want it to name the key and %s", msg, tt.wantLine)
			}
			if s.Scan() {
				t.Error("Scan after an error returned true")
			}
		})
	}
}

// TestScannerAllocs checks that scanning allocates nothing per line: Bytes point into the reused buffer.
func TestScannerAllocs(t *testing.T) {
	data := bytes.Repeat([]byte(`{"resourceType":"Patient","id":"x"}`+"\n"), 10000)
	r := bytes.NewReader(data)
	s := NewScanner(r, "k", Options{})
	allocs := testing.AllocsPerRun(5, func() {
		r.Reset(data)
		*s = Scanner{src: r, key: "k", max: s.max, buf: s.buf}
		for s.Scan() {
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per 10000-line scan, want 0", allocs)
	}
	if s.Lines() != 10000 {
		t.Errorf("Lines() = %d, want 10000", s.Lines())
	}
}

// BenchmarkScan measures scanning throughput over mixed-length CRLF lines: from memory, and gzipped through Open.
func BenchmarkScan(b *testing.B) {
	var buf bytes.Buffer
	for i := 0; buf.Len() < 32<<20; i++ {
		buf.WriteString(`{"resourceType":"Observation","id":"`)
		buf.WriteString(strings.Repeat("0123456789", 1+i%200))
		buf.WriteString("\"}\r\n")
	}
	data := buf.Bytes()
	count := func(b *testing.B, s *Scanner) {
		var n int64
		for s.Scan() {
			n += s.Line().Length
		}
		if s.Err() != nil || n == 0 {
			b.Fatal(s.Err())
		}
	}
	b.Run("plain", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			count(b, NewScanner(bytes.NewReader(data), "bench", Options{}))
		}
	})
	b.Run("gzip", func(b *testing.B) {
		bkt := memBucket(b, map[string][]byte{"bench.ndjson.gz": gz(b, string(data))})
		b.SetBytes(int64(len(data))) // decompressed bytes
		b.ReportAllocs()
		for b.Loop() {
			s, c, err := Open(context.Background(), bkt, "bench.ndjson.gz", Options{})
			if err != nil {
				b.Fatal(err)
			}
			count(b, s)
			c.Close()
		}
	})
}
