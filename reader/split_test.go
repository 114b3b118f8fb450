package reader

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
)

type readLine struct {
	Offset int64
	Text   string
	Number int64
}

// readSplit returns the lines of s (and, for per-Patient splits, the blocks opened).
func readSplit(t *testing.T, b *blob.Bucket, s Split) (lines []readLine, blocks int64) {
	t.Helper()
	sc, closer, err := OpenSplit(context.Background(), b, s, Options{MaxLineBytes: 1024})
	if err != nil {
		t.Fatalf("open %+v: %v", s, err)
	}
	defer closer.Close()
	bs := NewBlockScanner(sc, BlockOptions{Layout: s.Layout})
	for bs.Scan() {
		l := bs.Line()
		lines = append(lines, readLine{Offset: l.Offset, Text: string(l.Bytes), Number: l.Number})
	}
	if err := bs.Err(); err != nil {
		t.Fatalf("read %+v: %v", s, err)
	}
	return lines, bs.Blocks()
}

func texts(ls []readLine) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = fmt.Sprintf("%d:%s", l.Offset, l.Text)
	}
	return out
}

// TestSplitEveryOffset cuts small objects at every offset (and at every pair of offsets) and checks that the splits
// together read every line of the whole object exactly once, in order.
func TestSplitEveryOffset(t *testing.T) {
	tests := []struct {
		name    string
		content string
		layout  Layout
	}{
		{name: "lines", content: "{\"a\":1}\n{\"b\":22}\n{\"c\":333}\n{\"d\":4}\n", layout: LayoutType},
		{name: "no final newline", content: "{\"a\":1}\n{\"b\":22}\n{\"c\":333}", layout: LayoutType},
		{name: "blank lines and CRLF", content: "{\"a\":1}\r\n\r\n\n  \n{\"b\":22}\r\n\n{\"c\":3}\n", layout: LayoutType},
		{name: "BOM", content: "\xEF\xBB\xBF{\"a\":1}\n{\"b\":2}\n", layout: LayoutType},
		{name: "one-byte lines", content: "1\n2\n3\n4\n5\n", layout: LayoutType},
		{
			name: "patient blocks",
			content: `{"resourceType":"Patient","id":"p1"}` + "\n" + `{"resourceType":"Observation","id":"o1"}` + "\n" +
				`{"resourceType":"Organization","id":"g"}` + "\n" + `{"resourceType":"Patient","id":"p2"}` + "\n" +
				`{"resourceType":"Observation","id":"o2"}` + "\n\n" + `{"resourceType":"Patient","id":"p3"}` + "\n",
			layout: LayoutPatient,
		},
		{
			name: "patient blocks with headers",
			content: `{"resourceType":"Parameters","parameter":[{"valueReference":{"reference":"Patient/p1"}}]}` + "\n" +
				`{"resourceType":"Patient","id":"p1"}` + "\n" + `{"resourceType":"Observation","id":"o1"}` + "\n" +
				`{"resourceType":"Parameters","parameter":[{"valueReference":{"reference":"Patient/p2"}}]}` + "\n" +
				`{"resourceType":"Patient","id":"p2"}` + "\n" + `{"resourceType":"Observation","id":"o2"}` + "\n",
			layout: LayoutPatient,
		},
		{
			name: "lines before the first patient",
			content: `{"resourceType":"Organization","id":"g"}` + "\n" + `{"resourceType":"Patient","id":"p1"}` + "\n" +
				`{"resourceType":"Observation","id":"o1"}` + "\n",
			layout: LayoutPatient,
		},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := memblob.OpenBucket(nil)
			defer b.Close()
			if err := b.WriteAll(ctx, "o.ndjson", []byte(tt.content), nil); err != nil {
				t.Fatal(err)
			}
			size := int64(len(tt.content))
			whole, wholeBlocks := readSplit(t, b, Split{Key: "o.ndjson", End: size, Size: size, Layout: tt.layout})
			want := texts(whole)
			if len(want) == 0 {
				t.Fatal("the whole object reads no line")
			}
			check := func(cuts ...int64) {
				t.Helper()
				var got []string
				var blocks int64
				bounds := append(append([]int64{0}, cuts...), size)
				for i := 0; i+1 < len(bounds); i++ {
					s := Split{Key: "o.ndjson", Start: bounds[i], End: bounds[i+1], Size: size, Layout: tt.layout}
					lines, n := readSplit(t, b, s)
					for _, l := range lines {
						if s.Start > 0 && l.Number != 0 {
							t.Fatalf("cuts %v: line at %d of a split past byte 0 has number %d, want 0", cuts, l.Offset, l.Number)
						}
					}
					got = append(got, texts(lines)...)
					blocks += n
				}
				if !slices.Equal(got, want) {
					t.Fatalf("cuts %v: read\n%s\nwant\n%s", cuts, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				if blocks != wholeBlocks {
					t.Fatalf("cuts %v: %d blocks, want %d", cuts, blocks, wholeBlocks)
				}
			}
			for i := int64(1); i < size; i++ {
				check(i)
			}
			// Three splits: every pair of cuts in the small objects, a sample in the larger ones.
			step := max(1, size/40)
			for i := int64(1); i < size; i += step {
				for j := i + 1; j < size; j += step {
					check(i, j)
				}
			}
		})
	}
}

func TestSplitLineNumbers(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	content := "{\"a\":1}\n\n{\"b\":2}\n{\"c\":3}\n"
	if err := b.WriteAll(ctx, "o", []byte(content), nil); err != nil {
		t.Fatal(err)
	}
	size := int64(len(content))
	first, _ := readSplit(t, b, Split{Key: "o", Start: 0, End: 10, Size: size})
	if len(first) != 2 || first[0].Number != 1 || first[1].Number != 3 || first[1].Offset != 9 {
		t.Errorf("first split = %+v, want lines 1 and 3 (the line starting at End finishes the split)", first)
	}
	second, _ := readSplit(t, b, Split{Key: "o", Start: 10, End: size, Size: size})
	if len(second) != 1 || second[0].Number != 0 || second[0].Offset != 17 {
		t.Errorf("second split = %+v, want one line at offset 17 with number 0", second)
	}
}

func TestSplittable(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	objects := []struct {
		name, key, content, encoding string
		want                         bool
	}{
		{name: "plain", key: "a.ndjson", content: "{}\n", want: true},
		{name: "gzip content", key: "b.ndjson", content: "\x1f\x8b\x08rest", want: false},
		{name: "gz name", key: "c.ndjson.gz", content: "{}\n", want: false},
		{name: "gzip encoding", key: "d.ndjson", content: "{}\n", encoding: "gzip", want: false},
		{name: "empty", key: "e.ndjson", content: "", want: true},
	}
	for _, o := range objects {
		t.Run(o.name, func(t *testing.T) {
			if err := b.WriteAll(ctx, o.key, []byte(o.content), &blob.WriterOptions{ContentEncoding: o.encoding}); err != nil {
				t.Fatal(err)
			}
			got, err := Splittable(ctx, b, o.key)
			if err != nil {
				t.Fatal(err)
			}
			if got != o.want {
				t.Errorf("Splittable = %v, want %v", got, o.want)
			}
		})
	}
}
