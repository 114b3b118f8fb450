package reader

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"gocloud.dev/blob"
)

// Split is a byte range [Start, End) of an object, read on its own so that one object can be spread over several
// processes. A split owns the lines that start inside it: every line of the object belongs to exactly one split of
// a partition of [0, Size).
//
//   - A split that starts past byte 0 skips to just past the first '\n' at or after Start-1, so a line starting
//     exactly at Start is its own and the line crossing Start is the previous split's.
//   - It reads on past End to finish the line that crosses End.
//   - In LayoutPatient a split cuts at Patient blocks instead: one that starts mid-block skips to the first block
//     opener (a Patient line, or a Parameters header naming a Patient) starting at or after Start, and it reads on
//     past End until the next opener, finishing its last block. A Patient line directly after a header naming it
//     is part of the header's block, not an opener.
//
// Line numbers cannot be known past byte 0 without reading everything before: lines of a split with Start > 0
// have Number 0, and their Offset (absolute in the object) locates them.
type Split struct {
	Key        string
	Start, End int64
	Size       int64 // the object's size; a split with Start 0 and End >= Size is the whole object
	// Layout of the object: LayoutPatient cuts at block boundaries, anything else at lines. It must be decided for
	// the object (DetectLayout), not per split: an auto layout would be decided again from each split's first lines.
	Layout Layout
}

// Whole reports whether s covers its whole object.
func (s Split) Whole() bool { return s.Start <= 0 && s.End >= s.Size }

// lookBehind bounds how far OpenSplit reads back to see the line before a split's first line (is it a header?).
const lookBehind = 64 << 10

// OpenSplit opens a split for line reading, with a range read from Start-1 to the end of the object (closed as soon
// as the split is done). A whole split is Open. A split of part of an object must not be of a gzip object
// (Splittable); its bytes are read as they are.
func OpenSplit(ctx context.Context, b *blob.Bucket, s Split, opts Options) (*Scanner, io.Closer, error) {
	if s.Whole() {
		return Open(ctx, b, s.Key, opts)
	}
	if s.Start < 0 || s.End <= s.Start {
		return nil, nil, fmt.Errorf("open %s [%d, %d): empty or negative range", s.Key, s.Start, s.End)
	}
	from := max(s.Start-1, 0)
	r, err := b.NewRangeReader(ctx, s.Key, from, -1, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s at offset %d: %w", s.Key, from, err)
	}
	br := bufio.NewReaderSize(r, initialBufferSize)
	first := int64(0)
	if s.Start > 0 {
		n, err := skipLine(br)
		if err != nil && err != io.EOF {
			r.Close()
			return nil, nil, fmt.Errorf("read %s at offset %d: %w", s.Key, from, err)
		}
		first = from + n
	}
	sc := NewScanner(br, s.Key, opts)
	if first > 0 {
		sc.started = true // a BOM is only at byte 0
		sc.unnumbered = true
		sc.off = first
	}
	if s.Layout == LayoutPatient {
		g := &blockGate{start: s.Start, end: s.End, skipping: s.Start > 0}
		if s.Start > 0 {
			prev, err := lineBefore(ctx, b, s.Key, first)
			if err != nil {
				r.Close()
				return nil, nil, err
			}
			g.header = openerHeader(prev)
		}
		sc.gate = g.verdict
	} else {
		sc.gate = func(start int64, _ Line) gateVerdict {
			if start >= s.End {
				return gateStop
			}
			return gateEmit
		}
	}
	return sc, r, nil
}

// skipLine consumes r up to and including the next '\n' and returns the bytes consumed; io.EOF if there is none.
func skipLine(r *bufio.Reader) (int64, error) {
	var n int64
	for {
		b, err := r.ReadSlice('\n')
		n += int64(len(b))
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return n, err
		}
	}
}

// lineBefore returns the last non-blank line that ends before off (a line start), or nil when there is none within
// lookBehind bytes.
func lineBefore(ctx context.Context, b *blob.Bucket, key string, off int64) ([]byte, error) {
	if off <= 0 {
		return nil, nil
	}
	from := max(off-lookBehind, 0)
	data, err := readRange(ctx, b, key, from, off-from)
	if err != nil {
		return nil, fmt.Errorf("read %s before offset %d: %w", key, off, err)
	}
	for len(data) > 0 {
		data = bytes.TrimSuffix(data, []byte{'\n'})
		i := bytes.LastIndexByte(data, '\n')
		if i < 0 && from > 0 {
			return nil, nil // longer than lookBehind: not a header
		}
		line := data[i+1:]
		if !isBlank(line) {
			return bytes.TrimSuffix(line, []byte{'\r'}), nil
		}
		data = data[:max(i, 0)]
	}
	return nil, nil
}

func readRange(ctx context.Context, b *blob.Bucket, key string, off, n int64) ([]byte, error) {
	r, err := b.NewRangeReader(ctx, key, off, n, nil)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// blockGate cuts a per-Patient split at block openers.
type blockGate struct {
	start, end int64
	skipping   bool   // before the split's first opener
	header     string // the Patient the previous non-blank line, a header, names; "" if it is no header
}

func (g *blockGate) verdict(start int64, l Line) gateVerdict {
	opener := false
	header := ""
	if !l.Oversize {
		rt, id, _ := peek(l.Bytes, false)
		switch rt {
		case "Parameters":
			header = headerPatient(l.Bytes)
			opener = header != ""
		case "Patient":
			opener = g.header == "" || id != g.header
		}
	}
	g.header = header
	switch {
	case g.skipping && start >= g.end:
		return gateStop // a block longer than the split: the previous split reads it
	case g.skipping && !opener:
		return gateSkip
	case g.skipping:
		g.skipping = false
		return gateEmit
	case opener && start >= g.end:
		return gateStop
	}
	return gateEmit
}

// openerHeader is the Patient a header line names, "" for any other line.
func openerHeader(line []byte) string {
	if line == nil {
		return ""
	}
	if rt, _, _ := peek(line, false); rt != "Parameters" {
		return ""
	}
	return headerPatient(line)
}

// Splittable reports whether key can be read in byte ranges: its stored bytes are its content. A gzip object (by
// its first bytes, its Content-Encoding, or a ".gz" name) cannot: it is read whole.
func Splittable(ctx context.Context, b *blob.Bucket, key string) (bool, error) {
	if strings.HasSuffix(strings.ToLower(key), ".gz") {
		return false, nil
	}
	attrs, err := b.Attributes(ctx, key)
	if err != nil {
		return false, fmt.Errorf("splittable %s: %w", key, err)
	}
	if strings.Contains(strings.ToLower(attrs.ContentEncoding), "gzip") {
		return false, nil
	}
	gz, err := isGzip(ctx, b, key)
	if err != nil {
		return false, fmt.Errorf("splittable %s: %w", key, err)
	}
	return !gz, nil
}

// DetectLayout decides the layout of an object as a BlockScanner with LayoutAuto would, from its first lines, so
// that every split of the object is read the same way.
func DetectLayout(ctx context.Context, b *blob.Bucket, key string, opts Options, bopts BlockOptions) (Layout, error) {
	sc, closer, err := Open(ctx, b, key, opts)
	if err != nil {
		return "", err
	}
	defer closer.Close()
	bopts.Layout = LayoutAuto
	bs := NewBlockScanner(sc, bopts)
	bs.sniff()
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("detect layout of %s: %w", key, err)
	}
	return bs.Layout(), nil
}
