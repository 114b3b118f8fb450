package sinks

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sync"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/metadata"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"
)

// This file encodes Parquet column chunks: data pages (version 1) of RLE-encoded levels and PLAIN or dictionary
// encoded values, compressed, with an optional dictionary page in front. What the Parquet library still does is the
// schema, the statistics (its typed statistics, updated here) and the encoding of the footer (its metadata
// builders, from the records of footer.go).
//
// Why not the library's column writers: they take levels one int16 at a time (the level encoder is a call per
// level), and a wide FHIR table has rows × leaves levels, nearly all of them "absent". Here the walk of
// columns.go hands over runs, a run of absent entries is one RLE run whatever its length, and a chunk that holds no
// value costs a page header and a few bytes.

// sliceRows is how many rows of a record the walk takes at a time; the page and dictionary limits are checked
// between slices, as the library checks them between batches of 1024 levels.
const sliceRows = 1024

// Parquet format enums (parquet.thrift).
const (
	pageTypeData       = 0
	pageTypeDictionary = 2
)

// chunkWriter encodes the row group a part is building, record after record as they are written, and writes it
// out when it ends. It holds the state of every leaf's column chunk (leafChunk) for that row group only: what a
// row group holds until it is written is its compressed pages, the page being filled and the dictionary of each
// leaf, not the records, which the Table's caller may release as soon as Write returns.
//
// A leaf's chunk state is made when the leaf first gets a value in the part. Most leaves of a FHIR table never
// get one (an Observation has 1,068 leaf columns, a row uses a few dozen), and until then a leaf is a slot of 16
// bytes rather than a leafChunk of about 450: the chunks without a value are encoded in spare.
type chunkWriter struct {
	codec  compress.Codec
	layout *tableLayout // its leaves, and the writer properties
	leaves []leafSlot   // by leaf index
	spare  leafChunk    // the chunk of a leaf without state: walked for its levels, or encoded without a value

	lc *leafChunk // the chunk being encoded

	rows int   // of the row group
	segs int   // records (or slices of them) added to the row group
	held int64 // bytes the row group holds, as of the last add

	// Levels of leaves without a value, for the row group (see add).
	recording bool       // emit encodes into recDef and recRep instead of the chunk
	recDef    rleEncoder // the run list being recorded
	recRep    rleEncoder //
	recN      int        // its level entries
	listBytes []byte     // the encoded levels of every run list, one after the other
	lists     []runList  // the run lists, by number
	listOf    map[listKey]int32
	chains    []chainLink // chain 0 is the empty chain
	chainOf   map[chainLink]int32
	empty     map[emptyKey]emptyChunk // chunks without a value, encoded

	// Scratch. What a page is encoded in (its body, compressed) is pageScratch's, for as long as flushPage or
	// finish takes.
	hdr       []byte
	tmpBytes  []parquet.ByteArray // PLAIN values not yet in the statistics
	tmpInts   []int64
	tmpFloats []float64
	minMax    [2]parquet.ByteArray
}

// leafSlot is a leaf of the row group being built.
type leafSlot struct {
	lc *leafChunk // the leaf's chunk state, made when it first gets a value in the part, then kept

	// While the row group has given the leaf no value, its levels are not encoded: chain names the run lists
	// they are made of, which leaves with the same history share.
	chain    int32
	deferred bool
}

// leafChunk is the column chunk of one leaf in the row group being built.
type leafChunk struct {
	leaf  *leafPath
	stats metadata.TypedStatistics // made on first use, reset for each chunk

	useDict  bool // values go into the dictionary (until it reaches its size limit)
	fellBack bool // the dictionary reached its limit: the pages after it are PLAIN

	// The page being built.
	def, rep   rleEncoder
	pageLevels int      // level entries: the page's num_values
	pageValues int      // values present (def == maxDef)
	plain      []byte   // PLAIN values
	bools      int      // booleans packed into plain
	idx        []uint32 // dictionary indices, runs of one as the index with runFlag then the count (putIdx)
	idxRun     bool     // idx ends with a run

	// The chunk.
	levels, values int64
	data           []byte // data pages written so far (headers and compressed bodies), after the dictionary page
	uncompressed   int64  // of data
	dictPages      int32  // data pages dictionary-encoded
	plainPages     int32  // data pages PLAIN
	dict           dictionary
	hasFalse       bool // boolean values seen, for the statistics
	hasTrue        bool
	statsAlias     bool // the byte array statistics' min or max may point into a record
}

// size is about what the chunk holds in memory: its data pages, the page being built and the dictionary.
func (lc *leafChunk) size() int64 {
	return int64(cap(lc.data) + lc.pageCap() + lc.dict.mem())
}

// pageCap is the memory the buffers of the page being built take, with the room they keep: a page's buffers stay
// with the leaf for its next page until the row group ends.
func (lc *leafChunk) pageCap() int {
	return cap(lc.plain) + 4*cap(lc.idx) + cap(lc.def.out) + cap(lc.rep.out) + 4*(cap(lc.def.lit)+cap(lc.rep.lit))
}

// pageMem is what the page being built holds in memory.
func (lc *leafChunk) pageMem() int {
	return len(lc.plain) + 4*len(lc.idx) + len(lc.def.out) + len(lc.rep.out) + 4*(len(lc.def.lit)+len(lc.rep.lit))
}

// emptyValue is the empty string or binary value: not nil.
var emptyValue = []byte{}

// scrubValues replaces the last min and max of a statistics object.
var scrubValues = []parquet.ByteArray{emptyValue}

// dictionary holds the distinct values of a chunk in order of first appearance. Byte array values are copied,
// PLAIN-encoded, into plain, which is the body of the dictionary page: the records they come from are released
// before the chunk is written. starts finds each of them, so that an entry costs 4 bytes beside its value and its
// index slot, and holds no pointer for the collector to follow.
type dictionary struct {
	index  dictIndex // of the values, by id
	plain  []byte    // byte array values, PLAIN-encoded (length, then bytes), in order
	starts []uint32  // where each byte array value's length is in plain
	int64s []int64
	floats []float64
	size   int   // PLAIN-encoded size
	last   int32 // 1 + the index of the last byte array value put, 0 for none: runs of a value skip the index
}

func (d *dictionary) len() int { return len(d.starts) + len(d.int64s) + len(d.floats) }

// value returns byte array value id.
func (d *dictionary) value(id int32) []byte {
	s := d.starts[id]
	n := binary.LittleEndian.Uint32(d.plain[s:])
	return d.plain[s+4 : s+4+n : s+4+n]
}

// mem is about what the dictionary holds in memory: its values, with the room its slices keep to grow, and its
// index.
func (d *dictionary) mem() int {
	return cap(d.plain) + 4*cap(d.starts) + 8*(cap(d.int64s)+cap(d.floats)) + d.index.bytes()
}

// runList is the levels of n entries, kept in the RLE/bit-packed hybrid as a data page has them (a row of a list
// of several elements is a run of its own, and this packs them): listBytes[start:mid] the definition levels of
// width defW, listBytes[mid:end] the repetition levels of width repW, none when repW is 0 (then all are 0).
type runList struct {
	start, mid, end int32
	n               int32
	defW, repW      uint8
}

// listKey names the run list of the leaves whose path is null throughout at a child of node (-1: at their
// top-level column) in the seg-th record added.
type listKey struct {
	seg  int32
	node int32
}

// chainLink is a chain of run lists: the chain prev, then the list.
type chainLink struct{ prev, list int32 }

// emptyKey names the encoding of a chunk without a value: its run lists and the widths of its levels.
type emptyKey struct {
	chain      int32
	defW, repW uint8
}

// emptyChunk is the encoded data pages of a chunk without a value.
type emptyChunk struct {
	data         []byte
	levels       int64
	uncompressed int64
	pages        int32
}

func newChunkWriter(l *tableLayout) (*chunkWriter, error) {
	codec, err := compress.GetCodec(l.props.Compression())
	if err != nil {
		return nil, err
	}
	c := &chunkWriter{
		codec:   codec,
		layout:  l,
		leaves:  make([]leafSlot, len(l.leaves)),
		listOf:  map[listKey]int32{},
		chainOf: map[chainLink]int32{},
		empty:   map[emptyKey]emptyChunk{},
	}
	c.startRowGroup()
	return c, nil
}

// startRowGroup readies every leaf for a new row group.
func (c *chunkWriter) startRowGroup() {
	c.rows, c.segs, c.held = 0, 0, 0
	c.listBytes, c.lists = c.listBytes[:0], c.lists[:0]
	clear(c.listOf)
	clear(c.chainOf)
	clear(c.empty)
	c.chains = append(c.chains[:0], chainLink{-1, -1})
	for i := range c.leaves {
		s := &c.leaves[i]
		s.deferred, s.chain = true, 0
		if s.lc != nil {
			c.begin(s.lc)
		}
	}
}

// A chunk without a value is only levels, and these depend only on the arrays above the first step where the
// leaf's path is null in every element: every leaf under an absent struct or under the elements of a list shares
// them. In a wide FHIR table most chunks are such, and many share, so a record's levels for such a leaf are
// walked once per record and node (a run list), and a leaf that has had no value in the row group only keeps
// which run lists its levels are made of (a chain). Chunks that end the row group without a value are encoded
// (and compressed) once per chain and level widths; a leaf that gets a value replays its chain first.

// cutNode reports whether the path of leaf l is null throughout at some node of rec's column (the leaf has no
// value in rec), and returns the parent of the first such node: -1 when it is the column itself. The levels of
// such a leaf are those of the arrays down to that parent, with a null below it: they are alike for every leaf
// that is null throughout below the same parent, so that siblings (the absent fields of a present struct, the
// absent top-level columns) share one run list.
func cutNode(l *leafPath, rec arrow.Record) (int32, bool) {
	a := rec.Column(int(l.column))
	parent := int32(-1)
	for _, st := range l.steps {
		if st.optional && a.NullN() == a.Len() {
			return parent, true
		}
		parent = st.node
		switch st.kind {
		case stepStruct:
			a = a.(*array.Struct).Field(int(st.field))
		case stepList:
			a = a.(*array.List).ListValues()
		}
	}
	return 0, false
}

// add encodes rows [lo, hi) of rec into the row group.
func (c *chunkWriter) add(rec arrow.Record, lo, hi int) {
	seg := int32(c.segs)
	c.segs++
	c.rows += hi - lo
	var held int64
	paths := c.layout.leaves
	for i := range c.leaves {
		s := &c.leaves[i]
		node, cut := cutNode(&paths[i], rec)
		switch {
		case cut && s.deferred:
			c.lc = s.lc
			if c.lc == nil {
				c.lc = c.spareFor(&paths[i])
			}
			s.chain = c.extend(s.chain, c.runList(rec, lo, hi, seg, node))
			if s.lc == nil {
				continue
			}
		case cut:
			c.lc = s.lc
			c.replay(c.runList(rec, lo, hi, seg, node))
			c.checkPage()
		default:
			if s.lc == nil {
				s.lc = &leafChunk{leaf: &paths[i]}
				c.begin(s.lc)
			}
			c.lc = s.lc
			if s.deferred {
				c.replayChain(s.chain)
				s.deferred = false
			}
			c.addRows(rec, lo, hi)
		}
		lc := c.lc
		if lc.statsAlias {
			c.ownMinMax()
		}
		if lc.pageMem() >= spillPageBytes {
			c.flushPage()
			lc.trim()
		}
		held += lc.size()
	}
	c.held = held + int64(cap(c.listBytes))
}

// trim drops the buffers of the page being built that grew large, once the page is written: what a leaf keeps
// from Write to Write stays small, and a part has hundreds to thousands of leaves.
func (lc *leafChunk) trim() {
	const keep = 4 * spillPageBytes
	if cap(lc.plain) > keep {
		lc.plain = nil
	}
	if 4*cap(lc.idx) > keep {
		lc.idx = nil
	}
	for _, e := range []*rleEncoder{&lc.def, &lc.rep} {
		if cap(e.out) > keep || 4*cap(e.lit) > keep {
			e.out, e.lit = nil, nil
		}
	}
}

// spillPageBytes is the memory from which the page being built is compressed at the end of a Write rather than
// when it reaches the data page size: pages wait uncompressed for the next record only while they are small,
// so that a row group holds about its compressed size and dictionaries.
const spillPageBytes = 64 << 10

// runList returns the number of the run list of the leaves of rows [lo, hi) of rec, the seg-th record added,
// whose path is null throughout at a child of node (cutNode), walking the current leaf's path to make it.
func (c *chunkWriter) runList(rec arrow.Record, lo, hi int, seg, node int32) int32 {
	k := listKey{seg, node}
	if n, ok := c.listOf[k]; ok {
		return n
	}
	defW, repW := c.lc.def.width, c.lc.rep.width
	c.recDef.reset(defW)
	c.recRep.reset(repW)
	c.recN, c.recording = 0, true
	c.walk(0, rec.Column(int(c.lc.leaf.column)), lo, hi, 0, 0, 0)
	c.recording = false
	l := runList{start: int32(len(c.listBytes)), n: int32(c.recN), defW: uint8(defW), repW: uint8(repW)}
	c.listBytes = append(c.listBytes, c.recDef.finishRuns()...)
	l.mid = int32(len(c.listBytes))
	if repW > 0 {
		c.listBytes = append(c.listBytes, c.recRep.finishRuns()...)
	}
	l.end = int32(len(c.listBytes))
	n := int32(len(c.lists))
	c.lists = append(c.lists, l)
	c.listOf[k] = n
	return n
}

// extend returns the chain of chain followed by run list list.
func (c *chunkWriter) extend(chain, list int32) int32 {
	k := chainLink{chain, list}
	if n, ok := c.chainOf[k]; ok {
		return n
	}
	n := int32(len(c.chains))
	c.chains = append(c.chains, k)
	c.chainOf[k] = n
	return n
}

// replay encodes the levels of run list n into the current chunk. The levels of a list fit the chunk's widths:
// they are those of the arrays above a node every leaf under it shares.
func (c *chunkWriter) replay(n int32) {
	l := c.lists[n]
	lc := c.lc
	lc.pageLevels += int(l.n)
	if c.lc.leaf.maxDef > 0 {
		putHybrid(&lc.def, c.listBytes[l.start:l.mid], int(l.defW), int(l.n))
	}
	if c.lc.leaf.maxRep > 0 {
		if l.repW == 0 {
			lc.rep.put(0, int(l.n))
		} else {
			putHybrid(&lc.rep, c.listBytes[l.mid:l.end], int(l.repW), int(l.n))
		}
	}
}

// putHybrid puts the first n values of enc, in the RLE/bit-packed hybrid at width w, into e. enc is a run list's
// encoding (finishRuns), which holds no padding: one of several runs, when it has e's width and e holds nothing
// pending, is appended as it is. Otherwise it is decoded, and so one RLE run, the levels of most lists, merges
// with the run e is gathering.
func putHybrid(e *rleEncoder, enc []byte, w, n int) {
	vb := (w + 7) / 8 // bytes of an RLE run's value
	for n > 0 && len(enc) > 0 {
		h, k := binary.Uvarint(enc)
		oneRun := h&1 == 0 && k+vb == len(enc) // what is left of enc is one RLE run
		if !oneRun && w == e.width && e.rn == 0 && len(e.lit) == 0 {
			e.out = append(e.out, enc...)
			return
		}
		enc = enc[k:]
		if h&1 == 0 { // RLE run
			var v uint32
			for b := range vb {
				v |= uint32(enc[b]) << (8 * b)
			}
			enc = enc[vb:]
			m := min(int(h>>1), n)
			e.put(v, m)
			n -= m
			continue
		}
		groups := int(h >> 1) // of 8 values, w bytes each
		data := enc[:groups*w]
		enc = enc[groups*w:]
		var acc uint64
		nb := 0
		mask := uint64(1)<<w - 1
		for range groups * 8 {
			if n == 0 {
				break
			}
			for nb < w {
				acc |= uint64(data[0]) << nb
				data = data[1:]
				nb += 8
			}
			e.put(uint32(acc&mask), 1)
			acc >>= w
			nb -= w
			n--
		}
	}
}

// replayChain encodes the levels of the run lists of chain into the current chunk, for a leaf that gets its first
// value in the row group or ends it without one.
func (c *chunkWriter) replayChain(chain int32) {
	if chain == 0 {
		return
	}
	l := c.chains[chain]
	c.replayChain(l.prev)
	c.replay(l.list)
	c.checkPage()
}

// emptyChunk returns the encoded data pages of the current chunk, which has no value and whose levels are the
// run lists of chain.
func (c *chunkWriter) emptyChunk(chain int32) emptyChunk {
	lc := c.lc
	k := emptyKey{chain, uint8(lc.def.width), uint8(lc.rep.width)}
	if e, ok := c.empty[k]; ok {
		return e
	}
	c.replayChain(chain)
	c.flushPage()
	e := emptyChunk{data: lc.data, levels: lc.levels, uncompressed: lc.uncompressed, pages: lc.plainPages}
	c.empty[k] = e
	lc.data = nil // the cache owns it
	return e
}

// begin readies lc for a new row group: no level, no value, nothing held.
func (c *chunkWriter) begin(lc *leafChunk) {
	lc.useDict = lc.leaf.dict
	lc.fellBack = false
	lc.levels, lc.values = 0, 0
	lc.data, lc.uncompressed = nil, 0
	lc.dictPages, lc.plainPages = 0, 0
	lc.dict.index.reset()
	lc.dict = dictionary{index: lc.dict.index}
	lc.hasFalse, lc.hasTrue, lc.statsAlias = false, false, false
	lc.def = rleEncoder{width: bits.Len16(uint16(lc.leaf.maxDef))}
	lc.rep = rleEncoder{width: bits.Len16(uint16(lc.leaf.maxRep))}
	lc.pageLevels, lc.pageValues = 0, 0
	lc.plain, lc.idx, lc.idxRun, lc.bools = nil, nil, false, 0
}

// spareFor returns spare readied to walk the levels of leaf l, which has no chunk state: runList needs its path
// and level widths only.
func (c *chunkWriter) spareFor(l *leafPath) *leafChunk {
	c.spare.leaf = l
	c.spare.def.width = bits.Len16(uint16(l.maxDef))
	c.spare.rep.width = bits.Len16(uint16(l.maxRep))
	return &c.spare
}

func (c *chunkWriter) resetPage() {
	lc := c.lc
	lc.def.reset(lc.def.width)
	lc.rep.reset(lc.rep.width)
	lc.pageLevels, lc.pageValues = 0, 0
	lc.plain, lc.idx, lc.idxRun, lc.bools = lc.plain[:0], lc.idx[:0], false, 0
}

// addRows encodes rows [lo, hi) of rec into the current chunk.
func (c *chunkWriter) addRows(rec arrow.Record, lo, hi int) {
	col := rec.Column(int(c.lc.leaf.column))
	for lo < hi {
		end := min(hi, lo+sliceRows)
		c.walk(0, col, lo, end, 0, 0, 0)
		lo = end
		c.checkPage()
	}
}

// checkPage ends the current page when it is full, or when the dictionary is (the pages after it are PLAIN).
func (c *chunkWriter) checkPage() {
	lc := c.lc
	if lc.useDict && int64(lc.dict.size) >= c.layout.props.DictionaryPageSizeLimit() {
		c.flushPage() // the last dictionary-encoded page
		lc.useDict, lc.fellBack = false, true
	}
	if c.pageBytes() >= c.layout.props.DataPageSize() {
		c.flushPage()
	}
}

// pageBytes estimates the encoded size of the page being built.
func (c *chunkWriter) pageBytes() int64 {
	lc := c.lc
	n := len(lc.plain) + len(lc.def.out) + len(lc.rep.out) + len(lc.def.lit) + len(lc.rep.lit)
	if len(lc.idx) > 0 {
		n += len(lc.idx) * bits.Len(uint(lc.dict.len())) / 8
	}
	return int64(n)
}

// emit appends n entries at definition level d: the first at repetition level r0, the others at r. While a run
// list is recorded, it appends them to it instead.
func (c *chunkWriter) emit(n int, d, r0, r int16) {
	if n <= 0 {
		return
	}
	if c.recording {
		c.recN += n
		c.recDef.put(uint32(d), n)
		c.recRep.put(uint32(r0), 1)
		c.recRep.put(uint32(r), n-1)
		return
	}
	lc := c.lc
	lc.pageLevels += n
	if c.lc.leaf.maxDef > 0 {
		lc.def.put(uint32(d), n)
	}
	if c.lc.leaf.maxRep > 0 {
		lc.rep.put(uint32(r0), 1)
		lc.rep.put(uint32(r), n-1)
	}
}

// putValues encodes the values of elements [lo, hi) of a leaf array, all present.
func (c *chunkWriter) putValues(arr arrow.Array, lo, hi int) {
	c.lc.pageValues += hi - lo
	switch a := arr.(type) {
	case *array.String:
		data, base := a.ValueBytes(), a.ValueOffset(0) // data starts at the array's first value
		for i := lo; i < hi; i++ {
			start := a.ValueOffset(i) - base
			c.putBytes(data[start : start+a.ValueLen(i) : start+a.ValueLen(i)])
		}
	case *array.Binary:
		for i := lo; i < hi; i++ {
			c.putBytes(a.Value(i))
		}
	case *array.Boolean:
		for i := lo; i < hi; i++ {
			c.putBool(a.Value(i))
		}
	case *array.Int64:
		for _, v := range a.Int64Values()[lo:hi] {
			c.putInt64(v)
		}
	case *array.Timestamp:
		for _, v := range a.TimestampValues()[lo:hi] {
			c.putInt64(int64(v))
		}
	case *array.Float64:
		for _, v := range a.Float64Values()[lo:hi] {
			c.putFloat64(v)
		}
	default:
		panic(fmt.Sprintf("parquet leaf of arrow type %s", arr.DataType())) // leafPaths admits no other
	}
	c.flushStats()
}

// flushStats adds the PLAIN values collected since the last call to the chunk's statistics (dictionary values
// are added once each, when the chunk ends).
func (c *chunkWriter) flushStats() {
	if len(c.tmpBytes) > 0 {
		if s, ok := c.chunkStats().(*metadata.ByteArrayStatistics); ok {
			s.Update(c.tmpBytes, 0)
			c.lc.statsAlias = true
		}
		clear(c.tmpBytes)
		c.tmpBytes = c.tmpBytes[:0]
	}
	if len(c.tmpInts) > 0 {
		if s, ok := c.chunkStats().(*metadata.Int64Statistics); ok {
			s.Update(c.tmpInts, 0)
		}
		c.tmpInts = c.tmpInts[:0]
	}
	if len(c.tmpFloats) > 0 {
		if s, ok := c.chunkStats().(*metadata.Float64Statistics); ok {
			s.Update(c.tmpFloats, 0)
		}
		c.tmpFloats = c.tmpFloats[:0]
	}
}

// ownMinMax copies the current chunk's byte array min and max out of the record they came from, which its
// owner may release or reuse once Write returns.
func (c *chunkWriter) ownMinMax() {
	lc := c.lc
	lc.statsAlias = false
	s, ok := lc.stats.(*metadata.ByteArrayStatistics)
	if !ok || !s.HasMinMax() {
		return
	}
	// Fresh copies: min or max may be our last copy, which the statistics must not see overwritten.
	lo := append([]byte(nil), s.Min()...)
	hi := append([]byte(nil), s.Max()...)
	c.minMax = [2]parquet.ByteArray{nonNil(lo), nonNil(hi)}
	s.Reset()
	s.Update(c.minMax[:], 0)
	c.minMax = [2]parquet.ByteArray{}
}

// nonNil returns b, or the empty value for nil: statistics take nil for no value.
func nonNil(b []byte) []byte {
	if b == nil {
		return emptyValue
	}
	return b
}

func (c *chunkWriter) putBytes(b []byte) {
	b = nonNil(b)
	lc := c.lc
	if !lc.useDict {
		lc.plain = binary.LittleEndian.AppendUint32(lc.plain, uint32(len(b)))
		lc.plain = append(lc.plain, b...)
		c.tmpBytes = append(c.tmpBytes, b)
		return
	}
	d := &lc.dict
	if d.last > 0 && string(d.value(d.last-1)) == string(b) {
		lc.putIdx(uint32(d.last - 1))
		return
	}
	h := hashBytes(b)
	d.index.reserve()
	id, slot := d.index.findBytes(h, b, d)
	if id < 0 {
		id = int32(len(d.starts))
		d.index.insert(slot, h, id)
		d.starts = append(d.starts, uint32(len(d.plain)))
		d.plain = binary.LittleEndian.AppendUint32(d.plain, uint32(len(b)))
		d.plain = append(d.plain, b...)
		d.size += 4 + len(b)
	}
	d.last = id + 1
	lc.putIdx(uint32(id))
}

// runFlag marks a dictionary index in a page's idx that the count of a run of it follows.
const runFlag = 1 << 31

// putIdx appends dictionary index id to the page being built. A value that repeats the one before it makes a
// run, kept as two entries whatever its length: FHIR columns repeat a code or a system line after line, and the
// pages being built of a row group's chunks are most of what it holds.
func (lc *leafChunk) putIdx(id uint32) {
	n := len(lc.idx)
	switch {
	case lc.idxRun && lc.idx[n-2] == id|runFlag:
		lc.idx[n-1]++
	case !lc.idxRun && n > 0 && lc.idx[n-1] == id:
		lc.idx[n-1] = id | runFlag
		lc.idx = append(lc.idx, 2)
		lc.idxRun = true
	default:
		lc.idx = append(lc.idx, id)
		lc.idxRun = false
	}
}

func (c *chunkWriter) putInt64(v int64) {
	lc := c.lc
	if !lc.useDict {
		lc.plain = binary.LittleEndian.AppendUint64(lc.plain, uint64(v))
		c.tmpInts = append(c.tmpInts, v)
		return
	}
	d := &lc.dict
	h := hashNum(uint64(v))
	d.index.reserve()
	id, slot := d.index.findNum(h, uint64(v), bitsOf(d.int64s))
	if id < 0 {
		id = int32(len(d.int64s))
		d.index.insert(slot, h, id)
		d.int64s = append(d.int64s, v)
		d.size += 8
	}
	lc.putIdx(uint32(id))
}

func (c *chunkWriter) putFloat64(v float64) {
	lc := c.lc
	u := math.Float64bits(v)
	if !lc.useDict {
		lc.plain = binary.LittleEndian.AppendUint64(lc.plain, u)
		c.tmpFloats = append(c.tmpFloats, v)
		return
	}
	d := &lc.dict
	h := hashNum(u)
	d.index.reserve()
	id, slot := d.index.findNum(h, u, bitsOf(d.floats))
	if id < 0 {
		id = int32(len(d.floats))
		d.index.insert(slot, h, id)
		d.floats = append(d.floats, v)
		d.size += 8
	}
	lc.putIdx(uint32(id))
}

// putBool packs booleans PLAIN: one bit each, from the lowest bit of each byte.
func (c *chunkWriter) putBool(v bool) {
	lc := c.lc
	if lc.bools%8 == 0 {
		lc.plain = append(lc.plain, 0)
	}
	if v {
		lc.plain[len(lc.plain)-1] |= 1 << (lc.bools % 8)
		lc.hasTrue = true
	} else {
		lc.hasFalse = true
	}
	lc.bools++
}

// pageScratch is what a page is encoded in: its body, its body compressed, and for a dictionary-encoded data page
// its indices. A chunk writer takes one from pageScratches for each page it encodes. When each kept its own, the
// hundreds of chunk writers of a run of many types each held on to scratch as large as the largest page they had
// encoded (a text column's dictionary page: up to a MB, twice, uncompressed and compressed): 10 MB at
// r4-examples' two-core peak, none of it counted as a row group's.
type pageScratch struct {
	body, zbuf []byte
	ix         rleEncoder
}

var pageScratches = sync.Pool{New: func() any { return new(pageScratch) }}

func getPageScratch() *pageScratch { return pageScratches.Get().(*pageScratch) }

// flushPage writes the page being built into the chunk's data.
func (c *chunkWriter) flushPage() {
	lc := c.lc
	if lc.pageLevels == 0 {
		return
	}
	ps := getPageScratch()
	defer pageScratches.Put(ps)
	body := ps.body[:0]
	if c.lc.leaf.maxRep > 0 {
		body = appendLevels(body, &lc.rep)
	}
	if c.lc.leaf.maxDef > 0 {
		body = appendLevels(body, &lc.def)
	}
	enc := parquet.Encodings.Plain
	if lc.useDict && lc.pageValues > 0 {
		enc = c.layout.props.DictionaryIndexEncoding()
		w := max(1, bits.Len(uint(lc.dict.len()-1)))
		ix := &ps.ix
		ix.reset(w)
		for i := 0; i < len(lc.idx); i++ {
			if id := lc.idx[i]; id&runFlag == 0 {
				ix.put(id, 1)
			} else {
				i++
				ix.put(id&^runFlag, int(lc.idx[i]))
			}
		}
		body = append(body, byte(w))
		body = append(body, ix.finish()...)
		lc.dictPages++
	} else {
		body = append(body, lc.plain...)
		lc.plainPages++
	}
	z := c.codec.Encode(ps.zbuf[:0], body)
	c.hdr = appendPageHeader(c.hdr[:0], pageTypeData, len(body), len(z), lc.pageLevels, enc)
	lc.data = append(lc.data, c.hdr...)
	lc.data = append(lc.data, z...)
	lc.uncompressed += int64(len(c.hdr) + len(body))
	lc.levels += int64(lc.pageLevels)
	lc.values += int64(lc.pageValues)
	ps.body, ps.zbuf = body[:0], z[:0]
	c.resetPage()
}

// appendLevels appends levels as a version 1 data page holds them: their length in 4 bytes, then the RLE hybrid.
func appendLevels(b []byte, e *rleEncoder) []byte {
	enc := e.finish()
	b = binary.LittleEndian.AppendUint32(b, uint32(len(enc)))
	return append(b, enc...)
}

// writeRowGroup writes every chunk of the row group to w, adds what the footer needs of them to pm, and readies
// the writer for the next row group.
func (c *chunkWriter) writeRowGroup(w *countingWriter, pm *partMeta) error {
	var total int64
	paths := c.layout.leaves
	for i := range c.leaves {
		s := &c.leaves[i]
		lc := s.lc
		if lc == nil {
			lc = &c.spare
			lc.leaf = &paths[i]
			c.begin(lc)
		}
		c.lc = lc
		if s.deferred {
			e := c.emptyChunk(s.chain)
			lc.data, lc.levels, lc.uncompressed, lc.plainPages = e.data, e.levels, e.uncompressed, e.pages
		}
		cm, err := c.finish(w, pm)
		if err != nil {
			return fmt.Errorf("column %s: %w", c.layout.columnPath(i), err)
		}
		pm.chunks = append(pm.chunks, cm)
		total += cm.uncompressed
	}
	pm.groups = append(pm.groups, groupMeta{rows: int64(c.rows), uncompressed: total})
	c.startRowGroup()
	return nil
}

// finish writes the current chunk (its dictionary page, then its data pages) to w and returns what the footer
// needs of it; the min and max of its statistics go into pm.
func (c *chunkWriter) finish(w *countingWriter, pm *partMeta) (chunkMeta, error) {
	lc := c.lc
	c.flushPage()
	start := w.n
	cm := chunkMeta{values: lc.levels, uncompressed: lc.uncompressed, dictPages: lc.dictPages, plainPages: lc.plainPages}
	if lc.fellBack {
		cm.flags |= metaFellBack
	}
	if lc.dict.len() > 0 {
		ps := getPageScratch()
		defer pageScratches.Put(ps)
		body := c.dictPage(ps.body[:0])
		z := c.codec.Encode(ps.zbuf[:0], body)
		c.hdr = appendPageHeader(c.hdr[:0], pageTypeDictionary, len(body), len(z), lc.dict.len(),
			c.layout.props.DictionaryPageEncoding())
		cm.flags |= metaDict
		cm.dictOffset = w.n
		w.Write(c.hdr)
		w.Write(z)
		cm.uncompressed += int64(len(c.hdr) + len(body))
		ps.body, ps.zbuf = body[:0], z[:0]
	}
	cm.dataOffset = w.n
	w.Write(lc.data)
	if w.err != nil {
		return cm, w.err
	}
	cm.compressed = w.n - start
	if lc.leaf.node.sort != pqschema.SortUNKNOWN {
		st, err := c.encodeStats()
		if err != nil {
			return cm, err
		}
		pm.setStats(&cm, st)
	}
	return cm, nil
}

// dictPage appends the PLAIN encoding of the current chunk's dictionary to b.
func (c *chunkWriter) dictPage(b []byte) []byte {
	d := &c.lc.dict
	b = append(b, d.plain...)
	for _, v := range d.int64s {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	for _, v := range d.floats {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

// chunkStats returns the current leaf's statistics object, made on first use.
func (c *chunkWriter) chunkStats() metadata.TypedStatistics {
	lc := c.lc
	if lc.stats == nil {
		lc.stats = metadata.NewStatistics(lc.leaf.descr(), c.layout.props.Allocator())
	}
	return lc.stats
}

// encodeStats returns the chunk's statistics as the library's column writer would have them: min and max over
// the values (dropped when longer than the size limit), and the null count (entries without a value, empty lists
// included).
func (c *chunkWriter) encodeStats() (metadata.EncodedStatistics, error) {
	lc := c.lc
	if lc.values == 0 && lc.stats == nil {
		// No value: no min or max, and no statistics object to make.
		return metadata.EncodedStatistics{
			HasNullCount: true, NullCount: lc.levels, Signed: lc.leaf.node.sort == pqschema.SortSIGNED,
		}, nil
	}
	s := c.chunkStats()
	switch s := s.(type) {
	case *metadata.ByteArrayStatistics:
		d := &lc.dict
		for i := 0; i < len(d.starts); {
			c.tmpBytes = c.tmpBytes[:0]
			for ; i < len(d.starts) && len(c.tmpBytes) < sliceRows; i++ {
				c.tmpBytes = append(c.tmpBytes, d.value(int32(i)))
			}
			s.Update(c.tmpBytes, 0)
		}
		clear(c.tmpBytes)
		c.tmpBytes = c.tmpBytes[:0]
	case *metadata.Int64Statistics:
		s.Update(lc.dict.int64s, 0)
	case *metadata.Float64Statistics:
		s.Update(lc.dict.floats, 0)
	case *metadata.BooleanStatistics:
		if lc.hasFalse {
			s.Update([]bool{false}, 0)
		}
		if lc.hasTrue {
			s.Update([]bool{true}, 0)
		}
	}
	s.IncNulls(lc.levels - lc.values)
	enc, err := s.Encode() // copies min and max
	s.Reset()
	if ba, ok := s.(*metadata.ByteArrayStatistics); ok {
		// Reset leaves min and max pointing at the last values, in the dictionary or our buffers, which would
		// stay reachable as long as the statistics object: point them at a value of ours instead.
		ba.Update(scrubValues, 0)
		ba.Reset()
	}
	if err != nil {
		return enc, fmt.Errorf("statistics: %w", err)
	}
	enc.ApplyStatSizeLimits(int(lc.leaf.maxStats))
	enc.Signed = lc.leaf.node.sort == pqschema.SortSIGNED
	return enc, nil
}

// rleEncoder writes the RLE/bit-packed hybrid encoding of values of width bits, taking them as runs: a run of 8 or
// more becomes an RLE run, shorter ones go into bit-packed groups of 8.
type rleEncoder struct {
	width int
	out   []byte
	lit   []uint32 // values for bit-packed groups, not yet written
	rv    uint32   // the run being gathered
	rn    int
}

func (e *rleEncoder) reset(width int) {
	e.width, e.out, e.lit, e.rn = width, e.out[:0], e.lit[:0], 0
}

// put appends n copies of v.
func (e *rleEncoder) put(v uint32, n int) {
	if n <= 0 {
		return
	}
	if e.rn > 0 && v == e.rv {
		e.rn += n
		return
	}
	e.endRun()
	e.rv, e.rn = v, n
}

// endRun writes the run gathered, as an RLE run when it is long enough once the literals before it are filled
// up to a group of 8.
func (e *rleEncoder) endRun() {
	n := e.rn
	if n == 0 {
		return
	}
	e.rn = 0
	if fill := (8 - len(e.lit)%8) % 8; n-fill >= 8 {
		for range fill {
			e.lit = append(e.lit, e.rv)
		}
		e.flushLiterals()
		e.appendRun(e.rv, n-fill)
		return
	}
	l := len(e.lit)
	e.lit = slices.Grow(e.lit, n)[:l+n]
	for i := range e.lit[l:] {
		e.lit[l+i] = e.rv
	}
	if len(e.lit) >= 1024 {
		e.flushLiterals()
	}
}

// appendRun writes an RLE run of n values v.
func (e *rleEncoder) appendRun(v uint32, n int) {
	e.out = binary.AppendUvarint(e.out, uint64(n)<<1)
	for b := 0; b < (e.width+7)/8; b++ {
		e.out = append(e.out, byte(v>>(8*b)))
	}
}

// flushLiterals writes the whole groups of 8 literals as one bit-packed run, keeping the rest.
func (e *rleEncoder) flushLiterals() {
	m := len(e.lit) &^ 7
	if m == 0 {
		return
	}
	e.out = binary.AppendUvarint(e.out, uint64(m/8)<<1|1)
	if w := uint(e.width); w <= 8 {
		// A group of 8 values of up to 8 bits fits in a word: levels, and the indices of small dictionaries.
		var word [8]byte
		for g := 0; g < m; g += 8 {
			l := e.lit[g : g+8 : g+8]
			acc := uint64(l[0]) | uint64(l[1])<<w | uint64(l[2])<<(2*w) | uint64(l[3])<<(3*w) |
				uint64(l[4])<<(4*w) | uint64(l[5])<<(5*w) | uint64(l[6])<<(6*w) | uint64(l[7])<<(7*w)
			binary.LittleEndian.PutUint64(word[:], acc)
			e.out = append(e.out, word[:w]...)
		}
	} else {
		var acc uint64
		nb := 0
		for _, v := range e.lit[:m] {
			acc |= uint64(v) << nb
			nb += e.width
			for nb >= 8 {
				e.out = append(e.out, byte(acc))
				acc >>= 8
				nb -= 8
			}
		}
	}
	e.lit = e.lit[:copy(e.lit, e.lit[m:])]
}

// finishRuns ends the encoding like finish, but writes the literals that do not fill a group of 8 as RLE runs
// instead of padding them: the encoding then holds exactly the values put, and another encoding of the same
// width may follow it as it is.
func (e *rleEncoder) finishRuns() []byte {
	e.endRun()
	e.flushLiterals()
	lit := e.lit
	for i := 0; i < len(lit); {
		j := i + 1
		for j < len(lit) && lit[j] == lit[i] {
			j++
		}
		e.appendRun(lit[i], j-i)
		i = j
	}
	e.lit = e.lit[:0]
	return e.out
}

// finish ends the encoding, padding the last bit-packed group with zeros (the page says how many values there
// are), and returns it.
func (e *rleEncoder) finish() []byte {
	e.endRun()
	if len(e.lit) > 0 {
		for len(e.lit)%8 != 0 {
			e.lit = append(e.lit, 0)
		}
		e.flushLiterals()
	}
	return e.out
}

// appendPageHeader appends a Parquet PageHeader in Thrift's compact protocol: a data page header (version 1)
// or a dictionary page header, without statistics (the chunk has them).
func appendPageHeader(b []byte, typ int32, uncompressed, compressed, numValues int, enc parquet.Encoding) []byte {
	b = appendThriftI32(b, 1, int32(typ))
	b = appendThriftI32(b, 1, int32(uncompressed))
	b = appendThriftI32(b, 1, int32(compressed))
	if typ == pageTypeData {
		b = append(b, 2<<4|thriftStruct) // field 5: data_page_header
		b = appendThriftI32(b, 1, int32(numValues))
		b = appendThriftI32(b, 1, int32(enc))
		b = appendThriftI32(b, 1, int32(parquet.Encodings.RLE)) // definition levels
		b = appendThriftI32(b, 1, int32(parquet.Encodings.RLE)) // repetition levels
	} else {
		b = append(b, 4<<4|thriftStruct) // field 7: dictionary_page_header
		b = appendThriftI32(b, 1, int32(numValues))
		b = appendThriftI32(b, 1, int32(enc))
	}
	b = append(b, 0) // end of the inner struct
	return append(b, 0)
}

// Thrift compact protocol field types.
const (
	thriftI32    = 5
	thriftStruct = 12
)

// appendThriftI32 appends an i32 field whose id is delta more than the previous field's.
func appendThriftI32(b []byte, delta byte, v int32) []byte {
	b = append(b, delta<<4|thriftI32)
	return binary.AppendUvarint(b, uint64(uint32(v<<1)^uint32(v>>31)))
}
