package reader

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
)

// Layout says how the lines of an object are arranged.
type Layout string

// The layouts. The zero value "" means LayoutAuto.
const (
	// LayoutAuto decides per object from its first lines (see BlockOptions).
	LayoutAuto Layout = "auto"
	// LayoutType: the lines are independent resources (a per-type export, or any NDJSON).
	LayoutType Layout = "per-type"
	// LayoutPatient: the lines are Patient blocks, as Group/$export?organizeOutputBy=Patient writes them. A line
	// whose resourceType is Patient opens a block, and every line up to the next Patient belongs to it. In the HL7
	// variant a Parameters header line naming the Patient ("Patient/<id>" in a valueReference) opens the block;
	// the header is not data.
	LayoutPatient Layout = "per-patient"
)

// ParseLayout reads a layout name: "auto" (or ""), "per-type" or "per-patient".
func ParseLayout(s string) (Layout, error) {
	switch l := Layout(s); l {
	case "", LayoutAuto:
		return LayoutAuto, nil
	case LayoutType, LayoutPatient:
		return l, nil
	}
	return "", fmt.Errorf("unknown layout %q (want auto, per-type or per-patient)", s)
}

// Defaults of BlockOptions.
const (
	DefaultSniffLines = 256
	DefaultSniffBytes = 4 << 20
	DefaultMaxIssues  = 100
)

// BlockOptions tune a BlockScanner. The zero value works.
type BlockOptions struct {
	// Layout of the object; "" or LayoutAuto decides from its first lines: LayoutPatient when, within them, a
	// Parameters header names a Patient or a Patient line is followed by a line of another resourceType, else
	// LayoutType. An object of Patients only (or of Patients without resources) reads as LayoutType.
	Layout Layout
	// SniffLines and SniffBytes bound the lines held while deciding (zero: 256 lines, 4 MiB).
	SniffLines int
	SniffBytes int
	// MaxIssues bounds the issues kept per object (zero: 100); all are counted.
	MaxIssues int
}

// BlockLine is one data line and the block it belongs to.
type BlockLine struct {
	Line
	// Block is the 1-based ordinal of the line's block in the object; 0 for a line in no block (a per-type object,
	// or lines before the first block of a per-Patient object).
	Block int64
	// Patient is the id of the block's Patient: of its Patient line, or the one its header names.
	Patient string
	// Position is the 0-based position of the line in its block; a block's opening Patient line is 0.
	Position int64
}

// BlockIssue is a structural problem of a per-Patient object. Reason never holds content of the object.
type BlockIssue struct {
	Key    string
	Line   int64 // 0 when unknown (a split past byte 0): Offset locates it
	Offset int64
	Reason string
}

// BlockScanner reads the data lines of an object with their blocks. It wraps a Scanner; memory is the Scanner's
// plus, while LayoutAuto decides, up to SniffLines lines of SniffBytes.
type BlockScanner struct {
	sc   *Scanner
	opts BlockOptions

	layout  Layout
	decided bool
	pending []Line  // sniffed lines (copies in sniffed), replayed once decided
	sniffed *[]byte // the bytes of the pending lines, from sniffBuffers; handed back once they are all replayed
	line    BlockLine

	lines, headers, blocks int64
	started                bool // a data line was returned

	block        int64
	patient      string
	pos          int64
	headerAt     Line // the header line (Number, Offset; Bytes not kept)
	headerOpen   bool // the current block was opened by a header
	headerSeen   bool // the header's Patient line was found in its block
	last         Line // the last data line (Bytes not kept)
	lastComplete bool // the last line, when unterminated, is a complete JSON object

	issues      []BlockIssue
	issuesTotal int64
}

// NewBlockScanner reads sc in blocks.
func NewBlockScanner(sc *Scanner, opts BlockOptions) *BlockScanner {
	if opts.Layout == "" {
		opts.Layout = LayoutAuto
	}
	if opts.SniffLines <= 0 {
		opts.SniffLines = DefaultSniffLines
	}
	if opts.SniffBytes <= 0 {
		opts.SniffBytes = DefaultSniffBytes
	}
	if opts.MaxIssues <= 0 {
		opts.MaxIssues = DefaultMaxIssues
	}
	b := &BlockScanner{sc: sc, opts: opts, layout: opts.Layout}
	b.decided = opts.Layout != LayoutAuto
	return b
}

// Layout returns the layout in effect: the one asked for, or after the first Scan the one LayoutAuto decided.
func (b *BlockScanner) Layout() Layout { return b.layout }

// Line returns the line found by the last successful Scan. Its Bytes are valid until the next Scan.
func (b *BlockScanner) Line() BlockLine { return b.line }

// Err returns the Scanner's read error.
func (b *BlockScanner) Err() error { return b.sc.Err() }

// Lines returns the data lines returned so far (headers are not data).
func (b *BlockScanner) Lines() int64 { return b.lines }

// Headers returns the Parameters header lines read so far.
func (b *BlockScanner) Headers() int64 { return b.headers }

// Blocks returns the blocks opened so far.
func (b *BlockScanner) Blocks() int64 { return b.blocks }

// Issues returns the structural problems found (at most MaxIssues) and how many there were. They are complete once
// Scan has returned false.
func (b *BlockScanner) Issues() ([]BlockIssue, int64) { return b.issues, b.issuesTotal }

// Scan advances to the next data line. It returns false at the end of the object or on a read error.
func (b *BlockScanner) Scan() bool {
	if !b.decided {
		b.sniff()
	}
	for {
		var l Line
		switch {
		case len(b.pending) > 0:
			l = b.pending[0]
			b.pending[0] = Line{}
			b.pending = b.pending[1:]
		case b.sniffed != nil:
			// The last replayed line was valid until this Scan: nothing refers to the copies any more. A buffer
			// that a long line grew past twice the window is left to the collector.
			if cap(*b.sniffed) <= 2*b.opts.SniffBytes {
				*b.sniffed = (*b.sniffed)[:0]
				sniffBuffers.put(b.sniffed)
			}
			b.sniffed = nil
			continue
		case b.sc.Scan():
			l = b.sc.Line()
		default:
			b.end()
			b.line = BlockLine{}
			return false
		}
		if b.layout != LayoutPatient {
			b.lines++
			b.line = BlockLine{Line: l}
			return true
		}
		if b.next(l) {
			b.lines++
			return true
		}
	}
}

// sniffBuffers hold the copies of sniffed lines, one buffer per BlockScanner while it replays them: every object
// and split is sniffed, and its first lines would otherwise be copied into fresh memory each time.
var sniffBuffers freeList

// freeList keeps buffers for reuse, up to freeListBytes of them. Unlike a sync.Pool it keeps them through
// collections, and any goroutine gets what any other put back (a sync.Pool keeps a cache per P, and drops what it
// holds within two collections): on two cores, sniffing allocated 27 MB over synthea-100 × 10 with a sync.Pool,
// 11 MB with this. What it keeps is bounded in bytes, not buffers: a sniff buffer grows to 256 lines, MBs for an
// object of large resources.
type freeList struct {
	mu    sync.Mutex
	free  []*[]byte
	bytes int // the capacity of free's buffers
}

// freeListBytes is the most a freeList keeps: the sniff buffers of four readers of synthea-100 (about 0.3 MB
// each, 2.5 MB for ExplanationOfBenefit).
const freeListBytes = 4 << 20

func (f *freeList) get() *[]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.free); n > 0 {
		b := f.free[n-1]
		f.free[n-1] = nil
		f.free = f.free[:n-1]
		f.bytes -= cap(*b)
		return b
	}
	return new([]byte)
}

func (f *freeList) put(b *[]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bytes+cap(*b) <= freeListBytes {
		f.free = append(f.free, b)
		f.bytes += cap(*b)
	}
}

// sniff reads the first lines of the object and decides its layout.
func (b *BlockScanner) sniff() {
	b.decided = true
	b.layout = LayoutType
	sawPatient := false
	b.sniffed = sniffBuffers.get()
	buf := *b.sniffed
	defer func() { *b.sniffed = buf }()
	for len(b.pending) < b.opts.SniffLines && len(buf) < b.opts.SniffBytes && b.sc.Scan() {
		l := b.sc.Line()
		if l.Bytes != nil {
			// A line that does not fit moves buf: the lines before it keep the old array, which the collector
			// frees once they are replayed.
			start := len(buf)
			buf = append(buf, l.Bytes...)
			l.Bytes = buf[start:len(buf):len(buf)]
		}
		b.pending = append(b.pending, l)
		if l.Oversize {
			continue
		}
		rt, _, _ := peek(l.Bytes, false)
		switch {
		case rt == "Parameters" && headerPatient(l.Bytes) != "":
			b.layout = LayoutPatient
			return
		case rt == "Patient":
			sawPatient = true
		case rt != "" && sawPatient:
			b.layout = LayoutPatient
			return
		}
	}
}

// next places a line of a per-Patient object; it reports whether the line is data.
func (b *BlockScanner) next(l Line) bool {
	var rt, id string
	complete := true
	if !l.Oversize {
		rt, id, complete = peek(l.Bytes, l.Unterminated)
	}
	first := !b.started
	if rt == "Parameters" {
		if p := headerPatient(l.Bytes); p != "" {
			b.headers++
			b.closeBlock()
			b.open(p)
			b.headerAt, b.headerOpen, b.headerSeen = Line{Number: l.Number, Offset: l.Offset}, true, false
			b.started = true
			return false
		}
	}
	b.started = true
	switch {
	case rt == "Patient" && b.headerOpen && id == b.patient:
		b.headerSeen = true
	case rt == "Patient":
		b.closeBlock()
		b.open(id)
		if id == "" {
			b.report(l, "a Patient line without an id opens a block")
		}
	case b.block == 0 && first:
		b.report(l, "the object does not open with a Patient or a Parameters header: lines before the first Patient belong to no block")
	}
	b.line = BlockLine{Line: l}
	if b.block > 0 {
		b.pos++
		b.line.Block, b.line.Patient, b.line.Position = b.block, b.patient, b.pos
	}
	b.last = Line{Number: l.Number, Offset: l.Offset, Unterminated: l.Unterminated, Oversize: l.Oversize}
	b.lastComplete = complete
	return true
}

func (b *BlockScanner) open(patient string) {
	b.blocks++
	b.block, b.patient, b.pos = b.blocks, patient, -1 // the first line of the block is position 0
	b.headerOpen, b.headerSeen = false, false
}

// closeBlock reports a header whose Patient did not appear in its block.
func (b *BlockScanner) closeBlock() {
	if b.headerOpen && !b.headerSeen {
		b.report(b.headerAt, "the Parameters header names a Patient that does not follow in its block")
	}
	b.headerOpen = false
}

// end checks the end of the object: the last block, and a last line cut short.
func (b *BlockScanner) end() {
	if b.layout != LayoutPatient || b.sc.Err() != nil {
		return
	}
	b.closeBlock()
	if b.last.Number > 0 && b.last.Unterminated && !b.last.Oversize && !b.lastComplete {
		b.report(b.last, "the last line is truncated: it ends without a line feed inside a JSON value")
	}
	b.last = Line{}
}

func (b *BlockScanner) report(at Line, reason string) {
	b.issuesTotal++
	if len(b.issues) < b.opts.MaxIssues {
		b.issues = append(b.issues, BlockIssue{Key: b.sc.key, Line: at.Number, Offset: at.Offset, Reason: reason})
	}
}

// peek finds the top-level resourceType and, for a Patient, the id of a JSON object line without decoding it, and
// whether the object is complete (closed, nothing but spaces after it). Unless full, it stops once the type and id
// it needs are known, and complete is then true. Strings are returned unescaped only when they hold no
// escape (a type name or an id never needs one); an escaped one reads as "".
func peek(b []byte, full bool) (rt, id string, complete bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return "", "", false
	}
	i++
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return rt, id, false
		}
		if b[i] == '}' {
			return rt, id, skipSpace(b, i+1) == len(b)
		}
		if b[i] != '"' {
			return rt, id, false
		}
		kEnd, ok := stringEnd(b, i)
		if !ok {
			return rt, id, false
		}
		key := b[i+1 : kEnd-1]
		i = skipSpace(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return rt, id, false
		}
		i = skipSpace(b, i+1)
		vEnd, ok := valueEnd(b, i)
		if !ok {
			return rt, id, false
		}
		switch string(key) {
		case "resourceType":
			rt = plainString(b[i:vEnd])
		case "id":
			id = plainString(b[i:vEnd])
		}
		if !full && (rt != "" && rt != "Patient" && rt != "Parameters" || rt == "Patient" && id != "") {
			return rt, id, true
		}
		i = skipSpace(b, vEnd)
		if i < len(b) && b[i] == ',' {
			i++
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string starting at b[i] == '"'; ok is false if it is unterminated.
func stringEnd(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1, true
		}
	}
	return len(b), false
}

// valueEnd returns the index just past the JSON value starting at b[i]; ok is false if it does not end.
func valueEnd(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				end, ok := stringEnd(b, i)
				if !ok {
					return end, false
				}
				i = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, true
				}
			}
		}
		return i, false
	default:
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i, true
			}
		}
		return i, false // a scalar running to the end of the line: the object is not closed
	}
}

// plainString returns the content of a JSON string without escapes, "" for anything else.
func plainString(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' || bytes.IndexByte(raw, '\\') >= 0 {
		return ""
	}
	return string(raw[1 : len(raw)-1])
}

// headerPatient returns the id of the Patient a Parameters header line names: the first parameter whose
// valueReference.reference is "Patient/<id>" (relative, absolute, or with a "/_history/<v>" suffix). "" when it
// names none: such a Parameters line is data.
func headerPatient(line []byte) string {
	var h struct {
		Parameter []struct {
			ValueReference *struct {
				Reference string `json:"reference"`
			} `json:"valueReference"`
		} `json:"parameter"`
	}
	if json.Unmarshal(line, &h) != nil {
		return ""
	}
	for _, p := range h.Parameter {
		if p.ValueReference == nil {
			continue
		}
		ref := p.ValueReference.Reference
		i := strings.LastIndex(ref, "Patient/")
		if i < 0 || i > 0 && ref[i-1] != '/' {
			continue
		}
		id, _, _ := strings.Cut(ref[i+len("Patient/"):], "/")
		if id != "" {
			return id
		}
	}
	return ""
}
