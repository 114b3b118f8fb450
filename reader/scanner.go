// Package reader streams NDJSON objects line by line from a blob bucket (GCS, a local directory, memory).
//
// It is the first stage of a run: pipeline opens the source with OpenBucket, lists its objects with List, reads each
// with Open and hands every Line to transform; a line over the size limit is reported as Oversize and can be copied
// to quarantine with CopyLine without ever being held in memory. A BlockScanner reads per-Patient objects
// (Group/$export?organizeOutputBy=Patient) as blocks, each line placed in its Patient's block, and reports a
// malformed block structure. OpenSplit reads a byte range of an object (a Split) with a range read, so that one
// object is spread over the tasks of a run: every line belongs to the split it starts in. The reader knows nothing of FHIR beyond line and block boundaries (it peeks at a
// line's resourceType and a Patient's id, never decodes a resource), and trusts no object name.
package reader

import (
	"bytes"
	"fmt"
	"io"
	"math"
)

// DefaultMaxLineBytes is the line size limit used when Options.MaxLineBytes is zero.
const DefaultMaxLineBytes = 64 << 20

// initialBufferSize is the size of a Scanner's read buffer; it grows (doubling) only while a single line does not
// fit, and never past the line limit plus two bytes (a CR and the LF that tells the line has ended).
const initialBufferSize = 64 << 10

// Options tune a Scanner. The zero value works.
type Options struct {
	// MaxLineBytes is the largest line (without its CR/LF) returned with its bytes. A longer line is reported as
	// Oversize and skipped without being buffered. Zero or negative means DefaultMaxLineBytes.
	MaxLineBytes int
}

// Line is one non-blank line of an object.
type Line struct {
	Key string
	// Number is the 1-based physical line number in the (decompressed) stream; blank lines count. It is 0 when
	// unknown: in a split (OpenSplit) that starts past byte 0, since counting would mean reading what precedes it.
	Number   int64
	Offset   int64  // byte offset of the first byte of Bytes in the decompressed stream (after a BOM on line 1)
	Bytes    []byte // the line without CR/LF and without a leading UTF-8 BOM; valid until the next Scan
	Oversize bool   // the line exceeded MaxLineBytes: Bytes is nil, Length is its full length
	Length   int64  // length of the line in bytes, without terminator
	// Unterminated says the line ended at the end of the stream without a line feed: the last line of an object
	// written whole may lack one, a truncated object always does.
	Unterminated bool
}

// Scanner reads lines from a stream with a bounded buffer. Memory is the read buffer plus at most one line up to
// the limit, whatever the stream holds.
type Scanner struct {
	src io.Reader
	key string
	max int64 // line limit

	buf   []byte
	r, w  int   // unread data is buf[r:w]
	scan  int   // buf[r:scan] is known to hold no '\n'
	off   int64 // stream offset of buf[r]
	num   int64 // physical lines consumed
	lines int64 // non-blank lines returned

	started bool  // the BOM check is done
	bom     bool  // a BOM was dropped: line 1 starts at offset 0, its Bytes at 3
	rerr    error // sticky error from src, io.EOF included
	err     error // what Err reports
	done    bool
	line    Line

	// Set by OpenSplit. unnumbered: the stream starts mid-object, so line numbers are unknown (0).
	// gate decides, for each non-blank line from its start offset, whether it is returned, skipped or ends the scan.
	unnumbered bool
	gate       func(start int64, l Line) gateVerdict
}

// gateVerdict is what a split's gate does with a line.
type gateVerdict int

const (
	gateEmit gateVerdict = iota
	gateSkip
	gateStop
)

var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

// NewScanner returns a Scanner reading r, whose lines carry key. Blank lines (only spaces, tabs and CRs) are
// skipped but counted in line numbers. A UTF-8 BOM is dropped at the start of the stream only.
func NewScanner(r io.Reader, key string, opts Options) *Scanner {
	max := int64(opts.MaxLineBytes)
	if max <= 0 {
		max = DefaultMaxLineBytes
	}
	// The buffer may grow to max+2; keep that an int.
	if max > math.MaxInt-2 {
		max = math.MaxInt - 2
	}
	return &Scanner{src: r, key: key, max: max, buf: make([]byte, initialBufferSize)}
}

// Scan advances to the next non-blank line, which Line then returns. It returns false at the end of the stream or
// on a read error, which Err then returns.
func (s *Scanner) Scan() bool {
	if s.done {
		return false
	}
	if !s.started {
		s.started = true
		s.skipBOM()
	}
	for {
		ok, blank := s.next()
		if !ok {
			s.done = true
			s.line = Line{}
			return false
		}
		if blank {
			continue
		}
		if s.gate != nil {
			start := s.line.Offset
			if s.bom && s.line.Number == 1 {
				start = 0
			}
			switch s.gate(start, s.line) {
			case gateSkip:
				continue
			case gateStop:
				s.done = true
				s.line = Line{}
				return false
			}
		}
		s.lines++
		return true
	}
}

// Line returns the line found by the last successful Scan.
func (s *Scanner) Line() Line { return s.line }

// Err returns the read error that stopped Scan, naming the key and the line being read; nil at a clean end.
// An oversize line is never an error.
func (s *Scanner) Err() error { return s.err }

// Lines returns the number of non-blank lines returned so far, oversize ones included.
func (s *Scanner) Lines() int64 { return s.lines }

func (s *Scanner) skipBOM() {
	for s.w-s.r < len(utf8BOM) && s.rerr == nil {
		s.fill()
	}
	if bytes.HasPrefix(s.buf[s.r:s.w], utf8BOM) {
		s.r += len(utf8BOM)
		s.scan = s.r
		s.off += int64(len(utf8BOM))
		s.bom = true
	}
}

// next reads one physical line into s.line. ok is false at the end or on error.
func (s *Scanner) next() (ok, blank bool) {
	for {
		if i := bytes.IndexByte(s.buf[s.scan:s.w], '\n'); i >= 0 {
			end := s.scan + i
			return true, s.emit(s.buf[s.r:end], end+1-s.r)
		}
		s.scan = s.w
		if s.rerr != nil {
			if s.rerr != io.EOF {
				s.err = s.readErr(s.num+1, s.off)
				return false, false
			}
			if s.r == s.w {
				return false, false
			}
			// A final line without newline.
			blank := s.emit(s.buf[s.r:s.w], s.w-s.r)
			s.line.Unterminated = true
			return true, blank
		}
		if int64(s.w-s.r) >= s.max+2 {
			// Without its LF the line is already longer than the limit plus a CR.
			return s.skipOversize()
		}
		s.fill()
	}
}

// emit makes raw (a line without LF) the current line and consumes n bytes of the buffer. It reports whether the
// line is blank.
func (s *Scanner) emit(raw []byte, n int) (blank bool) {
	if k := len(raw); k > 0 && raw[k-1] == '\r' {
		raw = raw[:k-1]
	}
	s.num++
	s.line = Line{Key: s.key, Number: s.number(s.num), Offset: s.off, Length: int64(len(raw))}
	if int64(len(raw)) > s.max {
		s.line.Oversize = true
	} else {
		s.line.Bytes = raw
	}
	s.r += n
	s.scan = s.r
	s.off += int64(n)
	return isBlank(raw)
}

// skipOversize streams through the rest of a line that cannot fit, counting its length without keeping it.
func (s *Scanner) skipOversize() (ok, blank bool) {
	start, num := s.off, s.num+1
	var length int64
	var last byte
	var unterminated bool
	blank = true
	for {
		seg := s.buf[s.r:s.w]
		i := bytes.IndexByte(seg, '\n')
		if i >= 0 {
			seg = seg[:i]
		}
		if blank {
			blank = isBlank(seg)
		}
		if len(seg) > 0 {
			last = seg[len(seg)-1]
		}
		length += int64(len(seg))
		if i >= 0 {
			s.r += i + 1
			s.scan = s.r
			s.off += int64(i + 1)
			break
		}
		s.off += int64(len(seg))
		s.r, s.w, s.scan = 0, 0, 0
		if s.rerr != nil {
			if s.rerr != io.EOF {
				s.err = s.readErr(num, start)
				return false, false
			}
			unterminated = true // a final line without newline
			break
		}
		s.fill()
	}
	if last == '\r' {
		length--
	}
	s.num = num
	s.line = Line{Key: s.key, Number: s.number(num), Offset: start, Oversize: true, Length: length, Unterminated: unterminated}
	return true, blank
}

// number is the Line.Number of the n-th physical line read: n, or 0 when the scan started mid-object.
func (s *Scanner) number(n int64) int64 {
	if s.unnumbered {
		return 0
	}
	return n
}

// readErr names the line being read when the stream failed: by number, or by offset when numbers are unknown.
func (s *Scanner) readErr(n, off int64) error {
	if s.unnumbered {
		return fmt.Errorf("read %s at offset %d: %w", s.key, off, s.rerr)
	}
	return fmt.Errorf("read %s line %d: %w", s.key, n, s.rerr)
}

// fill reads more data into the buffer, making room first: it drops consumed bytes and, when one line fills the
// whole buffer, grows it up to the limit plus two.
func (s *Scanner) fill() {
	if s.r == s.w {
		s.r, s.w, s.scan = 0, 0, 0
	}
	if s.w == len(s.buf) && s.r > 0 {
		copy(s.buf, s.buf[s.r:s.w])
		s.w -= s.r
		s.scan -= s.r
		s.r = 0
	}
	if s.w == len(s.buf) {
		size := int64(len(s.buf)) * 2
		if size > s.max+2 {
			size = s.max + 2
		}
		nb := make([]byte, size)
		copy(nb, s.buf[:s.w])
		s.buf = nb
	}
	for range 100 {
		n, err := s.src.Read(s.buf[s.w:])
		if n < 0 || n > len(s.buf)-s.w {
			s.rerr = fmt.Errorf("reader returned invalid count %d", n)
			return
		}
		s.w += n
		if err != nil {
			s.rerr = err
			return
		}
		if n > 0 {
			return
		}
	}
	s.rerr = io.ErrNoProgress
}

// isBlank reports whether b holds only JSON whitespace other than LF.
func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}
