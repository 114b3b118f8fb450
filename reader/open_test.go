package reader

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
	"gocloud.dev/gcerrors"
)

func gz(t testing.TB, parts ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	for _, p := range parts { // one gzip member per part
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func memBucket(t testing.TB, objects map[string][]byte) *blob.Bucket {
	t.Helper()
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	for k, v := range objects {
		if err := b.WriteAll(context.Background(), k, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// numberedLines returns n distinct lines of varied length, each ending in "\n".
func numberedLines(n int) string {
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, `{"resourceType":"Observation","id":"o%d","note":"%s"}`+"\n", i, strings.Repeat("ab", i%37))
	}
	return sb.String()
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	body := numberedLines(2000)
	full := gz(t, body)
	badCRC := bytes.Clone(full)
	badCRC[len(badCRC)-8] ^= 0xff // the CRC-32 in the trailer
	flipped := bytes.Clone(full)
	flipped[len(flipped)/2] ^= 0x55

	tests := []struct {
		name      string
		key       string
		content   []byte
		want      []string // texts of the lines, nil to skip the comparison
		wantLines int64
		wantErr   error  // errors.Is target for Err, or nil
		errHas    string // more text the error must hold
		anyErr    bool   // some error is expected
		cut       bool   // the stream is truncated: fewer lines than written come out
	}{
		{name: "plain", key: "a.ndjson", content: []byte("a\nb\n"), want: []string{"a", "b"}, wantLines: 2},
		{name: "gz by suffix", key: "a.ndjson.gz", content: gz(t, "a\nb\n"), want: []string{"a", "b"}, wantLines: 2},
		{name: "gz sniffed without suffix", key: "Patient", content: gz(t, "a\nb"), want: []string{"a", "b"}, wantLines: 2},
		{name: "gz suffix over plain content", key: "served-decompressed.ndjson.gz", content: []byte("a\n"), want: []string{"a"}, wantLines: 1},
		{name: "gz with bom crlf blanks", key: "b.gz", content: gz(t, "\xEF\xBB\xBFa\r\n\r\nb\r\n"), want: []string{"a", "b"}, wantLines: 2},
		{name: "gz multi member", key: "m.gz", content: gz(t, "a\nb", "c\n"), want: []string{"a", "bc"}, wantLines: 2},
		{name: "gz large", key: "big.gz", content: full, want: strings.Split(strings.TrimSuffix(body, "\n"), "\n"), wantLines: 2000},
		{name: "empty object", key: "empty.ndjson", content: []byte{}, wantLines: 0},
		{name: "empty gz stream", key: "empty.gz", content: gz(t, ""), wantLines: 0},
		{name: "one byte", key: "one", content: []byte("{"), want: []string{"{"}, wantLines: 1},
		{
			name: "gz bad checksum", key: "exp/crc.ndjson.gz", content: badCRC,
			wantErr: gzip.ErrChecksum, errHas: "gunzip",
		},
		{name: "gz corrupt body", key: "exp/flip.ndjson.gz", content: flipped, anyErr: true, errHas: "gunzip"},
		{
			name: "gz truncated", key: "exp/cut.ndjson.gz", content: full[:len(full)/2],
			wantErr: io.ErrUnexpectedEOF, errHas: "gunzip", cut: true,
		},
		{
			name: "gz truncated in header", key: "exp/head.gz", content: full[:5],
			wantErr: io.ErrUnexpectedEOF, errHas: "line 1: gunzip", cut: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := memBucket(t, map[string][]byte{tt.key: tt.content})
			s, c, err := Open(ctx, b, tt.key, Options{})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer c.Close()
			var texts []string
			for s.Scan() {
				texts = append(texts, string(s.Line().Bytes))
			}
			err = s.Err()
			if tt.wantErr != nil || tt.anyErr {
				if err == nil {
					t.Fatalf("Err = nil after %d lines, want an error", len(texts))
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("Err = %v, want it to wrap %v", err, tt.wantErr)
				}
				msg := err.Error()
				if !strings.Contains(msg, "read "+tt.key+" line ") || !strings.Contains(msg, tt.errHas) {
					t.Errorf("Err = %q, want it to name the key, the line and %q", msg, tt.errHas)
				}
				if tt.cut && len(texts) >= 2000 {
					t.Errorf("read all %d lines of a broken stream", len(texts))
				}
				return
			}
			if err != nil {
				t.Fatalf("Err: %v", err)
			}
			if tt.want != nil && strings.Join(texts, "|") != strings.Join(tt.want, "|") {
				t.Errorf("lines = %.200q, want %.200q", texts, tt.want)
			}
			if s.Lines() != tt.wantLines {
				t.Errorf("Lines() = %d, want %d", s.Lines(), tt.wantLines)
			}
		})
	}
}

func TestOpenMissing(t *testing.T) {
	b := memBucket(t, nil)
	_, _, err := Open(context.Background(), b, "no/such.ndjson", Options{})
	if gcerrors.Code(err) != gcerrors.NotFound || !strings.Contains(err.Error(), "no/such.ndjson") {
		t.Fatalf("Open of a missing key: %v, want NotFound naming the key", err)
	}
}

// TestCopyLine scans an object with a small limit and copies every line, oversize or not, back by offset and length.
func TestCopyLine(t *testing.T) {
	ctx := context.Background()
	var sb strings.Builder
	var want []string
	sb.WriteString("\xEF\xBB\xBF")
	for i := range 40 {
		text := fmt.Sprintf(`{"id":"%d","pad":"%s"}`, i, strings.Repeat("z", (i*i*997)%150000))
		want = append(want, text)
		sb.WriteString(text)
		switch i % 3 {
		case 0:
			sb.WriteString("\r\n")
		case 1:
			sb.WriteString("\n \n") // and a blank line
		default:
			sb.WriteString("\n")
		}
	}
	plain := []byte(strings.TrimSuffix(sb.String(), "\n")) // the last line has no newline
	tests := []struct {
		name    string
		key     string
		content []byte
	}{
		{name: "plain", key: "in/Observation.ndjson", content: plain},
		{name: "gz", key: "in/Observation.ndjson.gz", content: gz(t, string(plain))},
		{name: "gz without suffix", key: "in/Observation", content: gz(t, string(plain))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := memBucket(t, map[string][]byte{tt.key: tt.content})
			s, c, err := Open(ctx, b, tt.key, Options{MaxLineBytes: 4096})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			i, oversize := 0, 0
			var buf bytes.Buffer
			for ; s.Scan(); i++ {
				l := s.Line()
				if i >= len(want) {
					t.Fatalf("more lines than the %d written", len(want))
				}
				if l.Oversize {
					oversize++
				} else if string(l.Bytes) != want[i] {
					t.Fatalf("line %d bytes differ from what was written", l.Number)
				}
				buf.Reset()
				if err := CopyLine(ctx, b, tt.key, l.Offset, l.Length, &buf); err != nil {
					t.Fatalf("CopyLine line %d: %v", l.Number, err)
				}
				if buf.String() != want[i] {
					t.Fatalf("CopyLine line %d: got %d bytes, want the %d written", l.Number, buf.Len(), len(want[i]))
				}
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			if i != len(want) || oversize < 10 || oversize == len(want) {
				t.Errorf("read %d lines (%d oversize), want %d with some but not all oversize", i, oversize, len(want))
			}
		})
	}
}

func TestCopyLineErrors(t *testing.T) {
	ctx := context.Background()
	b := memBucket(t, map[string][]byte{"p.ndjson": []byte("abc\n"), "z.gz": gz(t, "abc\n")})
	tests := []struct {
		name           string
		key            string
		offset, length int64
		wantErr        error
	}{
		{name: "plain past end", key: "p.ndjson", offset: 2, length: 10, wantErr: io.ErrUnexpectedEOF},
		{name: "gz past end", key: "z.gz", offset: 2, length: 10, wantErr: io.ErrUnexpectedEOF},
		{name: "gz offset past end", key: "z.gz", offset: 100, length: 1, wantErr: io.ErrUnexpectedEOF},
		{name: "negative offset", key: "p.ndjson", offset: -1, length: 1},
		{name: "missing key", key: "nope.ndjson", offset: 0, length: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := CopyLine(ctx, b, tt.key, tt.offset, tt.length, &buf)
			if err == nil {
				t.Fatalf("CopyLine = nil, want an error")
			}
			if !strings.Contains(err.Error(), tt.key) {
				t.Errorf("error %q does not name the key", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want it to wrap %v", err, tt.wantErr)
			}
		})
	}
}
