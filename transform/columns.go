package transform

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// This file builds the Arrow arrays of a batch. It replaces Arrow's builders for one reason: FHIR tables are wide
// (ExplanationOfBenefit has 2,641 leaf columns, Observation 1,068) and sparse, and a builder needs a null appended
// to every absent column of every row, which made null bookkeeping most of the conversion time. A col is built
// lazily instead: it only materialises the entries up to the last value appended to it, and pads the rest with
// nulls when a later value or the batch's end needs them (pad writes zero bits and repeats an offset, nothing per
// entry for fixed-width values). A column without any value in a batch costs nothing at all: at the batch's end
// it becomes an all-null array over one zeroed buffer shared by every such column of the flush.
//
// Buffers come from the Worker's allocator, so Worker.Bytes counts them and the records they end up in release
// them; freshly grown memory is cleared, since padding relies on zeroed validity bits and values.

// colKind is the physical layout of a col.
type colKind uint8

const (
	colStruct colKind = iota // validity; kids are the fields, nil until first used (kid)
	colList                  // validity, int32 offsets; kids[0] is the element
	colBinary                // validity, int32 offsets, data: string and binary
	colBool                  // validity, value bits
	colFixed8                // validity, 8-byte values: int64, float64, timestamp
)

// arena is where the cols of a Worker get their memory: an allocator, and a count of the bytes the cols hold
// (their buffers' capacity), apart from what they have handed over to records. It is used by one goroutine.
type arena struct {
	mem  memory.Allocator
	held int64
}

// col is one Arrow array under construction. Entries [0, n) are materialised; a parent that is longer treats the
// rest as null. Offsets (colBinary, colList) hold n+1 entries once n > 0.
type col struct {
	kind  colKind
	typ   arrow.DataType
	mem   *arena
	n     int // entries materialised
	valid int // of which not null
	// end is offset(n) of a colBinary or colList: where the next entry starts. Kept here, the append of a string
	// does not load it back from the offsets it last stored, a load that missed the cache often enough to show.
	end  int32
	bits gbuf
	vals gbuf // colFixed8 values, colBool value bits, colBinary data
	offs gbuf
	kids []*col
}

// newCol returns the col of an Arrow type the schema package produces. The fields of a struct get their cols on
// first use (kid): a FHIR table declares thousands of columns, and a batch fills few of them. A list's element col
// is made with the list.
func newCol(t arrow.DataType, mem *arena) (*col, error) {
	c := &col{typ: t, mem: mem}
	switch t := t.(type) {
	case *arrow.StructType:
		c.kind = colStruct
		c.kids = make([]*col, t.NumFields())
	case *arrow.ListType:
		c.kind = colList
		k, err := newCol(t.Elem(), mem)
		if err != nil {
			return nil, err
		}
		c.kids = []*col{k}
	case *arrow.StringType, *arrow.BinaryType:
		c.kind = colBinary
	case *arrow.BooleanType:
		c.kind = colBool
	case *arrow.Int64Type, *arrow.Float64Type, *arrow.TimestampType:
		c.kind = colFixed8
	default:
		return nil, fmt.Errorf("no column layout for Arrow type %s", t)
	}
	return c, nil
}

// kid returns the col of field i of a struct col, making it on first use.
func (c *col) kid(i int) (*col, error) {
	if k := c.kids[i]; k != nil {
		return k, nil
	}
	f := c.typ.(*arrow.StructType).Field(i)
	k, err := newCol(f.Type, c.mem)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name, err)
	}
	c.kids[i] = k
	return k, nil
}

// gbuf is a growable buffer from an allocator; only its capacity is tracked, the col knows how much is used.
//
// A batch's buffer starts small and doubles. It used to start at the size its col's buffer reached in the last
// batch, to save the copies of doubling, but that reserved a whole batch's memory for a type as soon as it got
// a row again, and a Worker flushes the types that hold the most memory: such types were flushed a few hundred
// rows in, as narrow records that the Parquet writer pays for per column. Without it, a run over synthea-100 × 10
// flushes 189 records instead of 206 on one core and 260 instead of 322 on two, allocates 2 to 5% less and peaks
// about 20 MB lower, at the same speed.
type gbuf struct {
	buf *memory.Buffer
	b   []byte // buf.Buf(): the whole capacity, zeroed where unused
}

// ensure makes at least size bytes available. Bitmaps and offsets are zeroed past what was written (pad relies on
// it); values and string data are not (ensureData): they are written before they are read, and pad clears the
// value slots of nulls, which Arrow leaves undefined, so that a recycled buffer's old bytes stay out of records.
//
// Both test the size themselves, so that the test is inlined where they are: nearly every call finds the room
// there, and a call to grow for that was 2% of a decoder's time.
func (g *gbuf) ensure(a *arena, size int) {
	if size > len(g.b) {
		g.grow(a, size, true)
	}
}

func (g *gbuf) ensureData(a *arena, size int) {
	if size > len(g.b) {
		g.grow(a, size, false)
	}
}

// grow makes at least size bytes available, more than there are.
func (g *gbuf) grow(a *arena, size int, zero bool) {
	if g.buf == nil {
		g.buf = memory.NewResizableBuffer(a.mem)
	}
	old := len(g.b)
	g.buf.Reserve(max(size, 2*old, 64))
	g.b = g.buf.Buf()
	a.held += int64(len(g.b) - old)
	if zero {
		clear(g.b[old:])
	}
}

// take hands the first size bytes over as a buffer (the caller owns the reference) and starts afresh.
func (g *gbuf) take(a *arena, size int, z *zeros) *memory.Buffer {
	if g.buf == nil {
		return z.buffer(size)
	}
	a.held -= int64(len(g.b))
	b := g.buf
	b.ResizeNoShrink(size)
	g.buf, g.b = nil, nil
	return b
}

func (g *gbuf) release(a *arena) {
	if g.buf != nil {
		a.held -= int64(len(g.b))
		g.buf.Release()
		g.buf, g.b = nil, nil
	}
}

func bitBytes(n int) int { return (n + 7) / 8 }

func (c *col) offset(i int) int32 { return int32(binary.LittleEndian.Uint32(c.offs.b[4*i:])) }

func (c *col) setOffset(i int, v int32) { binary.LittleEndian.PutUint32(c.offs.b[4*i:], uint32(v)) }

// pad materialises null entries up to index i (exclusive). Most calls find them materialised already: the test is
// inlined, and padTo does the work.
func (c *col) pad(i int) {
	if c.n < i {
		c.padTo(i)
	}
}

func (c *col) padTo(i int) {
	c.bits.ensure(c.mem, bitBytes(i))
	switch c.kind {
	case colBinary, colList:
		c.offs.ensure(c.mem, 4*(i+1))
		if c.end != 0 {
			for j := c.n + 1; j <= i; j++ {
				c.setOffset(j, c.end)
			}
		}
	case colFixed8:
		// Null slots are zeroed, so that no value of an earlier batch (or of a row truncated away) stays in the
		// buffer a record hands out.
		c.vals.ensureData(c.mem, 8*i)
		clear(c.vals.b[8*c.n : 8*i])
	case colBool:
		c.vals.ensure(c.mem, bitBytes(i))
	}
	c.n = i
}

// markValid materialises entry i (after padding) as not null.
func (c *col) markValid(i int) {
	c.pad(i)
	c.bits.ensure(c.mem, bitBytes(i+1))
	c.bits.b[i>>3] |= 1 << (i & 7)
	c.n = i + 1
	c.valid++
}

// setStruct marks struct entry i present; its fields are appended at index i.
func (c *col) setStruct(i int) { c.markValid(i) }

func (c *col) appendBinary(i int, s []byte) {
	c.pad(i)
	c.offs.ensure(c.mem, 4*(i+2))
	start := int(c.end)
	end := start + len(s)
	if end > math.MaxInt32 {
		// Cannot happen for a batch bounded by BatchBytes; keep the layout valid rather than wrap around.
		s, end = nil, start
	}
	c.vals.ensureData(c.mem, end)
	copy(c.vals.b[start:], s)
	c.setOffset(i+1, int32(end))
	c.end = int32(end)
	c.markValid(i)
}

func (c *col) appendFixed8(i int, v uint64) {
	c.pad(i)
	c.vals.ensureData(c.mem, 8*(i+1))
	binary.LittleEndian.PutUint64(c.vals.b[8*i:], v)
	c.markValid(i)
}

func (c *col) appendBool(i int, v bool) {
	c.pad(i)
	c.vals.ensure(c.mem, bitBytes(i+1))
	if v {
		c.vals.b[i>>3] |= 1 << (i & 7)
	}
	c.markValid(i)
}

// beginList materialises list entry i as present and returns the index its first element takes in the element
// col. The entry is provisional (empty) until endList gives its length, so that a failure in between is visible
// as a materialised entry (Worker's misalignment check) rather than hidden.
func (c *col) beginList(i int) int {
	c.pad(i)
	c.offs.ensure(c.mem, 4*(i+2))
	start := c.end
	c.setOffset(i+1, start)
	c.markValid(i)
	return int(start)
}

// endList closes list entry i at element index end (exclusive).
func (c *col) endList(i, end int) {
	c.setOffset(i+1, int32(end))
	c.end = int32(end)
}

// truncate drops the entries from index n on, leaving the col as if they had never been appended: validity and
// boolean value bits past n are cleared and offsets past n zeroed (pad relies on both), and the children drop what
// those entries held.
func (c *col) truncate(n int) {
	if c.n <= n {
		return
	}
	c.valid -= clearBits(c.bits.b, n, c.n)
	switch c.kind {
	case colStruct:
		for _, k := range c.kids {
			if k != nil {
				k.truncate(n)
			}
		}
	case colList:
		c.end = c.offset(n)
		c.kids[0].truncate(int(c.end))
		clear(c.offs.b[4*(n+1) : 4*(c.n+1)])
	case colBinary:
		c.end = c.offset(n)
		clear(c.offs.b[4*(n+1) : 4*(c.n+1)])
	case colBool:
		clearBits(c.vals.b, n, c.n)
	}
	c.n = n
}

// clearBits clears bits [from, to) of a bitmap and returns how many were set.
func clearBits(b []byte, from, to int) int {
	set := 0
	for i := from; i < to; i++ {
		if m := byte(1) << (i & 7); b[i>>3]&m != 0 {
			b[i>>3] &^= m
			set++
		}
	}
	return set
}

// finish returns the col's first length entries as Arrow data (the caller releases it) and starts a new batch.
func (c *col) finish(length int, z *zeros) arrow.ArrayData {
	if c.n == 0 {
		return z.nulls(c.typ, length)
	}
	c.pad(length)
	validity := c.bits.take(c.mem, bitBytes(length), z)
	var buffers []*memory.Buffer
	var children []arrow.ArrayData
	switch c.kind {
	case colStruct:
		buffers = []*memory.Buffer{validity}
		st := c.typ.(*arrow.StructType)
		for i, k := range c.kids {
			children = append(children, finishCol(k, st.Field(i).Type, length, z))
		}
	case colList:
		end := int(c.offset(length))
		buffers = []*memory.Buffer{validity, c.offs.take(c.mem, 4*(length+1), z)}
		children = []arrow.ArrayData{c.kids[0].finish(end, z)}
	case colBinary:
		end := int(c.offset(length))
		buffers = []*memory.Buffer{validity, c.offs.take(c.mem, 4*(length+1), z), c.vals.take(c.mem, end, z)}
	case colBool:
		buffers = []*memory.Buffer{validity, c.vals.take(c.mem, bitBytes(length), z)}
	case colFixed8:
		buffers = []*memory.Buffer{validity, c.vals.take(c.mem, 8*length, z)}
	}
	d := array.NewData(c.typ, length, buffers, children, length-c.valid, 0)
	for _, b := range buffers {
		b.Release()
	}
	for _, ch := range children {
		ch.Release()
	}
	c.n, c.valid, c.end = 0, 0, 0
	c.offs.release(c.mem) // not taken by the kinds without offsets
	c.vals.release(c.mem)
	return d
}

// finishCol is c.finish for a col of type t, which is nil when no row has used it yet: then it is null throughout.
func finishCol(c *col, t arrow.DataType, length int, z *zeros) arrow.ArrayData {
	if c == nil {
		return z.nulls(t, length)
	}
	return c.finish(length, z)
}

// release frees what the col holds.
func (c *col) release() {
	c.bits.release(c.mem)
	c.vals.release(c.mem)
	c.offs.release(c.mem)
	c.n, c.valid, c.end = 0, 0, 0
	for _, k := range c.kids {
		if k != nil {
			k.release()
		}
	}
}

// materialised reports whether the col holds entries past index n: a row that failed half-way left values.
func (c *col) materialised(n int) bool { return c.n > n }

// zeros is one zeroed buffer shared by the all-null arrays (and the empty buffers) of one flush. The all-null
// arrays of a type are alike for a length, so a flush makes each once and hands out references: a wide table has
// hundreds of leaves without a value in a batch, most of them strings of the batch's length, and many structs
// without one, of the few types the schema shares among its elements (a Coding, a Reference).
type zeros struct {
	mem  memory.Allocator
	buf  *memory.Buffer
	made map[nullKey]arrow.ArrayData
}

type nullKey struct {
	t arrow.DataType // the schema's own, which it shares among elements of the same type (schema.shared)
	n int
}

// buffer returns a reference to size zero bytes.
func (z *zeros) buffer(size int) *memory.Buffer {
	if z.buf == nil || z.buf.Len() < size {
		if z.buf != nil {
			z.buf.Release()
		}
		z.buf = memory.NewResizableBuffer(z.mem)
		z.buf.Resize(max(size, 64))
		clear(z.buf.Bytes())
	}
	s := memory.SliceBuffer(z.buf, 0, size) // retains z.buf until released
	return s
}

// nulls returns an array of length nulls of type t; the caller releases it.
func (z *zeros) nulls(t arrow.DataType, length int) arrow.ArrayData {
	k := nullKey{t, length}
	d, ok := z.made[k]
	if !ok {
		if z.made == nil {
			z.made = make(map[nullKey]arrow.ArrayData)
		}
		d = z.make(t, length)
		z.made[k] = d
	}
	d.Retain()
	return d
}

// make builds an all-null array of type t.
func (z *zeros) make(t arrow.DataType, length int) arrow.ArrayData {
	var buffers []*memory.Buffer
	var children []arrow.ArrayData
	validity := z.buffer(bitBytes(length))
	switch t := t.(type) {
	case *arrow.StructType:
		buffers = []*memory.Buffer{validity}
		children = make([]arrow.ArrayData, 0, t.NumFields())
		for i := range t.NumFields() { // not Fields(), which copies the slice: this runs per batch per struct
			children = append(children, z.nulls(t.Field(i).Type, length))
		}
	case *arrow.ListType:
		buffers = []*memory.Buffer{validity, z.buffer(4 * (length + 1))}
		children = []arrow.ArrayData{z.nulls(t.Elem(), 0)}
	case *arrow.StringType, *arrow.BinaryType:
		buffers = []*memory.Buffer{validity, z.buffer(4 * (length + 1)), z.buffer(0)}
	case *arrow.BooleanType:
		buffers = []*memory.Buffer{validity, z.buffer(bitBytes(length))}
	default: // the 8-byte kinds: newCol accepted nothing else
		buffers = []*memory.Buffer{validity, z.buffer(8 * length)}
	}
	d := array.NewData(t, length, buffers, children, length, 0)
	for _, b := range buffers {
		b.Release()
	}
	for _, ch := range children {
		ch.Release()
	}
	return d
}

func (z *zeros) release() {
	for _, d := range z.made {
		d.Release()
	}
	clear(z.made)
	if z.buf != nil {
		z.buf.Release()
		z.buf = nil
	}
}
