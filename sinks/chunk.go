package sinks

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/metadata"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"
)

// This file encodes Parquet column chunks: data pages (version 1) of RLE-encoded levels and PLAIN or dictionary
// encoded values, compressed, with an optional dictionary page in front. What the Parquet library still does is the
// schema, the statistics (its typed statistics, updated here) and the footer (its metadata builders).
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

// chunkWriter encodes one leaf column chunk after the other for a part. It is reused from chunk to chunk, keeping
// its buffers.
type chunkWriter struct {
	leaf  *leafPath
	descr *pqschema.Column
	codec compress.Codec
	props *parquet.WriterProperties
	stats []metadata.TypedStatistics // by leaf, made on first use and reset for each chunk

	useDict  bool // values go into the dictionary (until it reaches its size limit)
	fellBack bool // the dictionary reached its limit: the pages after it are PLAIN

	// The page being built.
	def, rep   rleEncoder
	ix         rleEncoder // dictionary indices, at page end
	pageLevels int        // level entries: the page's num_values
	pageValues int        // values present (def == maxDef)
	plain      []byte     // PLAIN values
	bools      int        // booleans packed into plain
	idx        []uint32   // dictionary indices

	// The chunk.
	levels, values int64
	data           []byte // data pages written so far (headers and compressed bodies), after the dictionary page
	uncompressed   int64  // of data
	dictPages      int32  // data pages dictionary-encoded
	plainPages     int32  // data pages PLAIN
	dict           dictionary
	hasFalse       bool // boolean values seen, for the statistics
	hasTrue        bool

	shared map[sharedKey]any // metadata pieces shared by the part's chunks (shareMeta)

	// Chunks without a value, by what their levels depend on (emptyKey), for the row group being written.
	empty map[string]emptyChunk
	key   []byte

	// Scratch.
	body, zbuf, hdr []byte
	tmpBytes        []parquet.ByteArray // PLAIN values not yet in the statistics
	tmpInts         []int64
	tmpFloats       []float64
}

// emptyValue is the empty string or binary value: not nil.
var emptyValue = []byte{}

// scrubValues replaces the last min and max of a statistics object.
var scrubValues = []parquet.ByteArray{emptyValue}

// dictionary holds the distinct values of a chunk in order of first appearance.
type dictionary struct {
	strs   map[string]int32 // keys alias the Arrow buffers of the row group's records, which outlive the chunk
	nums   map[uint64]int32 // int64 values, and float64 values by their bits
	bytes  []parquet.ByteArray
	int64s []int64
	floats []float64
	size   int // PLAIN-encoded size
}

func (d *dictionary) len() int { return len(d.bytes) + len(d.int64s) + len(d.floats) }

func (d *dictionary) reset() {
	clear(d.strs)
	clear(d.nums)
	clear(d.bytes) // drop references to the records' buffers
	d.bytes, d.int64s, d.floats, d.size = d.bytes[:0], d.int64s[:0], d.floats[:0], 0
}

func newChunkWriter(props *parquet.WriterProperties, leaves int) (*chunkWriter, error) {
	codec, err := compress.GetCodec(props.Compression())
	if err != nil {
		return nil, err
	}
	return &chunkWriter{
		codec:  codec,
		props:  props,
		stats:  make([]metadata.TypedStatistics, leaves),
		dict:   dictionary{strs: map[string]int32{}, nums: map[uint64]int32{}},
		empty:  map[string]emptyChunk{},
		shared: map[sharedKey]any{},
	}, nil
}

// emptyChunk is the encoded data pages of a chunk without a value.
type emptyChunk struct {
	data         []byte
	levels       int64
	uncompressed int64
	pages        int32
}

// A chunk without a value in a row group is only levels, and these depend only on the arrays above the first
// step where the leaf's path is null in every element: every leaf under an absent struct or under the elements of
// a list shares them. In a wide FHIR table most chunks are such, and many share, so a row group encodes (walks
// and compresses) each distinct one once.

// emptyKey returns what the levels of the current leaf's chunk of g depend on if it holds no value: for each
// segment the node at which the path is null throughout the segment's record, and the bit widths of the levels.
// It reports false when it cannot tell that the chunk holds no value.
func (c *chunkWriter) emptyKey(g *group) (string, bool) {
	k := c.key[:0]
	k = append(k, byte(c.def.width), byte(c.rep.width))
	for _, sg := range g.segs {
		a := sg.rec.Column(c.leaf.column)
		cut := false
		for _, st := range c.leaf.steps {
			if st.optional && a.NullN() == a.Len() {
				k = binary.AppendUvarint(k, uint64(st.node))
				cut = true
				break
			}
			switch st.kind {
			case stepStruct:
				a = a.(*array.Struct).Field(st.field)
			case stepList:
				a = a.(*array.List).ListValues()
			}
		}
		if !cut {
			c.key = k
			return "", false
		}
	}
	c.key = k
	return unsafe.String(unsafe.SliceData(k), len(k)), true // only to look up, or copied by keep
}

// encode encodes the chunk of leaf l (Parquet column descr) of row group g, or takes it from the chunks without a
// value encoded earlier in g when it is one of them.
func (c *chunkWriter) encode(l *leafPath, descr *pqschema.Column, g *group) {
	c.begin(l, descr)
	key, empty := c.emptyKey(g)
	if e, ok := c.empty[key]; empty && ok {
		c.load(e)
		return
	}
	for _, s := range g.segs {
		c.add(s.rec, s.lo, s.hi)
	}
	if empty {
		c.keep(key)
	}
}

// endRowGroup forgets what refers to the row group's records (the last chunk's dictionary) or holds for it only
// (its chunks without a value), before the records are released.
func (c *chunkWriter) endRowGroup() {
	c.dict.reset()
	clear(c.empty)
}

// load makes the chunk the empty chunk e.
func (c *chunkWriter) load(e emptyChunk) {
	c.data = append(c.data[:0], e.data...)
	c.levels, c.uncompressed, c.plainPages = e.levels, e.uncompressed, e.pages
}

// keep remembers the chunk just encoded, which holds no value, under key.
func (c *chunkWriter) keep(key string) {
	c.flushPage()
	c.empty[string([]byte(key))] = emptyChunk{
		data: append([]byte(nil), c.data...), levels: c.levels, uncompressed: c.uncompressed, pages: c.plainPages,
	}
}

// begin starts the chunk of leaf l, whose Parquet column is descr.
func (c *chunkWriter) begin(l *leafPath, descr *pqschema.Column) {
	c.leaf, c.descr = l, descr
	c.useDict = l.ptype != parquet.Types.Boolean && c.props.DictionaryEnabledFor(descr.Path())
	c.fellBack = false
	c.levels, c.values = 0, 0
	c.data, c.uncompressed = c.data[:0], 0
	c.dictPages, c.plainPages = 0, 0
	c.dict.reset()
	c.hasFalse, c.hasTrue = false, false
	c.resetPage()
}

func (c *chunkWriter) resetPage() {
	c.def.reset(bits.Len16(uint16(c.leaf.maxDef)))
	c.rep.reset(bits.Len16(uint16(c.leaf.maxRep)))
	c.pageLevels, c.pageValues = 0, 0
	c.plain, c.idx, c.bools = c.plain[:0], c.idx[:0], 0
}

// add encodes rows [lo, hi) of rec.
func (c *chunkWriter) add(rec arrow.Record, lo, hi int) {
	col := rec.Column(c.leaf.column)
	for lo < hi {
		end := min(hi, lo+sliceRows)
		c.walk(0, col, lo, end, 0, 0, 0)
		lo = end
		if c.useDict && int64(c.dict.size) >= c.props.DictionaryPageSizeLimit() {
			c.flushPage() // the last dictionary-encoded page
			c.useDict, c.fellBack = false, true
		}
		if c.pageBytes() >= c.props.DataPageSize() {
			c.flushPage()
		}
	}
}

// pageBytes estimates the encoded size of the page being built.
func (c *chunkWriter) pageBytes() int64 {
	n := len(c.plain) + len(c.def.out) + len(c.rep.out) + len(c.def.lit) + len(c.rep.lit)
	if len(c.idx) > 0 {
		n += len(c.idx) * bits.Len(uint(c.dict.len())) / 8
	}
	return int64(n)
}

// emit appends n entries at definition level d: the first at repetition level r0, the others at r.
func (c *chunkWriter) emit(n int, d, r0, r int16) {
	if n <= 0 {
		return
	}
	c.pageLevels += n
	if c.leaf.maxDef > 0 {
		c.def.put(uint32(d), n)
	}
	if c.leaf.maxRep > 0 {
		c.rep.put(uint32(r0), 1)
		c.rep.put(uint32(r), n-1)
	}
}

// putValues encodes the values of elements [lo, hi) of a leaf array, all present.
func (c *chunkWriter) putValues(arr arrow.Array, lo, hi int) {
	c.pageValues += hi - lo
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

func (c *chunkWriter) putBytes(b []byte) {
	if b == nil {
		b = emptyValue // the statistics take a nil value for none
	}
	if !c.useDict {
		c.plain = binary.LittleEndian.AppendUint32(c.plain, uint32(len(b)))
		c.plain = append(c.plain, b...)
		c.tmpBytes = append(c.tmpBytes, b)
		return
	}
	key := unsafe.String(unsafe.SliceData(b), len(b)) // no copy: see dictionary.strs
	id, ok := c.dict.strs[key]
	if !ok {
		id = int32(len(c.dict.bytes))
		c.dict.strs[key] = id
		c.dict.bytes = append(c.dict.bytes, b)
		c.dict.size += 4 + len(b)
	}
	c.idx = append(c.idx, uint32(id))
}

func (c *chunkWriter) putInt64(v int64) {
	if !c.useDict {
		c.plain = binary.LittleEndian.AppendUint64(c.plain, uint64(v))
		c.tmpInts = append(c.tmpInts, v)
		return
	}
	id, ok := c.dict.nums[uint64(v)]
	if !ok {
		id = int32(len(c.dict.int64s))
		c.dict.nums[uint64(v)] = id
		c.dict.int64s = append(c.dict.int64s, v)
		c.dict.size += 8
	}
	c.idx = append(c.idx, uint32(id))
}

func (c *chunkWriter) putFloat64(v float64) {
	u := math.Float64bits(v)
	if !c.useDict {
		c.plain = binary.LittleEndian.AppendUint64(c.plain, u)
		c.tmpFloats = append(c.tmpFloats, v)
		return
	}
	id, ok := c.dict.nums[u]
	if !ok {
		id = int32(len(c.dict.floats))
		c.dict.nums[u] = id
		c.dict.floats = append(c.dict.floats, v)
		c.dict.size += 8
	}
	c.idx = append(c.idx, uint32(id))
}

// putBool packs booleans PLAIN: one bit each, from the lowest bit of each byte.
func (c *chunkWriter) putBool(v bool) {
	if c.bools%8 == 0 {
		c.plain = append(c.plain, 0)
	}
	if v {
		c.plain[len(c.plain)-1] |= 1 << (c.bools % 8)
		c.hasTrue = true
	} else {
		c.hasFalse = true
	}
	c.bools++
}

// flushPage writes the page being built into the chunk's data.
func (c *chunkWriter) flushPage() {
	if c.pageLevels == 0 {
		return
	}
	body := c.body[:0]
	if c.leaf.maxRep > 0 {
		body = appendLevels(body, &c.rep)
	}
	if c.leaf.maxDef > 0 {
		body = appendLevels(body, &c.def)
	}
	enc := parquet.Encodings.Plain
	if c.useDict && c.pageValues > 0 {
		enc = c.props.DictionaryIndexEncoding()
		w := max(1, bits.Len(uint(c.dict.len()-1)))
		c.ix.reset(w)
		for _, id := range c.idx {
			c.ix.put(id, 1)
		}
		body = append(body, byte(w))
		body = append(body, c.ix.finish()...)
		c.dictPages++
	} else {
		body = append(body, c.plain...)
		c.plainPages++
	}
	z := c.codec.Encode(c.zbuf[:0], body)
	c.hdr = appendPageHeader(c.hdr[:0], pageTypeData, len(body), len(z), c.pageLevels, enc)
	c.data = append(c.data, c.hdr...)
	c.data = append(c.data, z...)
	c.uncompressed += int64(len(c.hdr) + len(body))
	c.levels += int64(c.pageLevels)
	c.values += int64(c.pageValues)
	c.body, c.zbuf = body[:0], z[:0]
	c.resetPage()
}

// appendLevels appends levels as a version 1 data page holds them: their length in 4 bytes, then the RLE hybrid.
func appendLevels(b []byte, e *rleEncoder) []byte {
	enc := e.finish()
	b = binary.LittleEndian.AppendUint32(b, uint32(len(enc)))
	return append(b, enc...)
}

// finish writes the chunk (its dictionary page, then its data pages) to w and completes its metadata cc. It
// returns the chunk's uncompressed size.
func (c *chunkWriter) finish(w *countingWriter, cc *metadata.ColumnChunkMetaDataBuilder) (int64, error) {
	c.flushPage()
	start := w.n
	uncompressed := c.uncompressed
	hasDict := c.dict.len() > 0
	var dictOffset int64
	if hasDict {
		body := c.dictPage(c.body[:0])
		z := c.codec.Encode(c.zbuf[:0], body)
		c.hdr = appendPageHeader(c.hdr[:0], pageTypeDictionary, len(body), len(z), c.dict.len(),
			c.props.DictionaryPageEncoding())
		dictOffset = w.n
		w.Write(c.hdr)
		w.Write(z)
		uncompressed += int64(len(c.hdr) + len(body))
		c.body, c.zbuf = body[:0], z[:0]
	}
	dataOffset := w.n
	w.Write(c.data)
	if w.err != nil {
		return 0, w.err
	}

	if c.descr.SortOrder() != pqschema.SortUNKNOWN {
		st, err := c.encodeStats()
		if err != nil {
			return 0, err
		}
		cc.SetStats(st)
	}
	encStats := metadata.EncodingStats{DataEncodingStats: map[parquet.Encoding]int32{}}
	if hasDict {
		encStats.DictEncodingStats = map[parquet.Encoding]int32{c.props.DictionaryPageEncoding(): 1}
	}
	if c.dictPages > 0 {
		encStats.DataEncodingStats[c.props.DictionaryIndexEncoding()] = c.dictPages
	}
	if c.plainPages > 0 {
		encStats.DataEncodingStats[parquet.Encodings.Plain] = c.plainPages
	}
	err := cc.Finish(metadata.ChunkMetaInfo{
		NumValues:        c.levels,
		DictPageOffset:   dictOffset,
		IndexPageOffset:  -1,
		DataPageOffset:   dataOffset,
		CompressedSize:   w.n - start,
		UncompressedSize: uncompressed,
	}, hasDict, c.fellBack, encStats, nil)
	if err != nil {
		return 0, err
	}
	c.shareMeta(cc)
	return uncompressed, nil
}

// sharedKey names a piece of chunk metadata that many chunks of a part have alike.
type sharedKey struct {
	kind byte // 's' statistics without min and max, 'e' encodings, 'p' page encoding statistics
	a, b int64
}

// shareMeta replaces the pieces of cc's metadata that many chunks have alike by one copy per part: the metadata
// of every chunk of a part is kept until the footer, and in a wide table most chunks are a page of levels with
// the same path, encodings and statistics but for the null count.
func (c *chunkWriter) shareMeta(cc *metadata.ColumnChunkMetaDataBuilder) {
	md := cc.Contents().MetaData
	md.PathInSchema = c.leaf.path
	if st := md.Statistics; st != nil && st.Max == nil && st.Min == nil && st.MaxValue == nil && st.MinValue == nil &&
		st.NullCount != nil && st.DistinctCount == nil {
		md.Statistics = shared(c.shared, sharedKey{'s', *st.NullCount, 0}, st)
	}
	var enc int64
	for _, e := range md.Encodings {
		enc = enc<<8 | int64(e)&0xff
	}
	if len(md.Encodings) <= 8 {
		md.Encodings = shared(c.shared, sharedKey{'e', enc, int64(len(md.Encodings))}, md.Encodings)
	}
	if len(md.EncodingStats) == 1 {
		es := md.EncodingStats[0]
		md.EncodingStats = shared(c.shared, sharedKey{'p', int64(es.PageType)<<8 | int64(es.Encoding), int64(es.Count)},
			md.EncodingStats)
	}
}

// shared returns the value m holds under k, or v after storing it there.
func shared[T any](m map[sharedKey]any, k sharedKey, v T) T {
	if s, ok := m[k]; ok {
		return s.(T)
	}
	m[k] = v
	return v
}

// dictPage appends the PLAIN encoding of the dictionary to b.
func (c *chunkWriter) dictPage(b []byte) []byte {
	for _, v := range c.dict.bytes {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	for _, v := range c.dict.int64s {
		b = binary.LittleEndian.AppendUint64(b, uint64(v))
	}
	for _, v := range c.dict.floats {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

// chunkStats returns the leaf's statistics object, made on first use.
func (c *chunkWriter) chunkStats() metadata.TypedStatistics {
	s := c.stats[c.leaf.index]
	if s == nil {
		s = metadata.NewStatistics(c.descr, c.props.Allocator())
		c.stats[c.leaf.index] = s
	}
	return s
}

// encodeStats returns the chunk's statistics as the library's column writer would have them: min and max over
// the values (dropped when longer than the size limit), and the null count (entries without a value, empty lists
// included).
func (c *chunkWriter) encodeStats() (metadata.EncodedStatistics, error) {
	if c.values == 0 && c.stats[c.leaf.index] == nil {
		// No value: no min or max, and no statistics object to make.
		return metadata.EncodedStatistics{
			HasNullCount: true, NullCount: c.levels, Signed: c.descr.SortOrder() == pqschema.SortSIGNED,
		}, nil
	}
	s := c.chunkStats()
	switch s := s.(type) {
	case *metadata.ByteArrayStatistics:
		s.Update(c.dict.bytes, 0)
	case *metadata.Int64Statistics:
		s.Update(c.dict.int64s, 0)
	case *metadata.Float64Statistics:
		s.Update(c.dict.floats, 0)
	case *metadata.BooleanStatistics:
		if c.hasFalse {
			s.Update([]bool{false}, 0)
		}
		if c.hasTrue {
			s.Update([]bool{true}, 0)
		}
	}
	s.IncNulls(c.levels - c.values)
	enc, err := s.Encode() // copies min and max
	s.Reset()
	if ba, ok := s.(*metadata.ByteArrayStatistics); ok {
		// Reset leaves min and max pointing into the records' buffers, which would stay reachable as long as the
		// statistics object: point them at a value of ours instead.
		ba.Update(scrubValues, 0)
		ba.Reset()
	}
	if err != nil {
		return enc, fmt.Errorf("statistics: %w", err)
	}
	enc.ApplyStatSizeLimits(int(c.props.MaxStatsSizeFor(c.descr.Path())))
	enc.Signed = c.descr.SortOrder() == pqschema.SortSIGNED
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
		e.out = binary.AppendUvarint(e.out, uint64(n-fill)<<1)
		for b := 0; b < (e.width+7)/8; b++ {
			e.out = append(e.out, byte(e.rv>>(8*b)))
		}
		return
	}
	for range n {
		e.lit = append(e.lit, e.rv)
	}
	if len(e.lit) >= 1024 {
		e.flushLiterals()
	}
}

// flushLiterals writes the whole groups of 8 literals as one bit-packed run, keeping the rest.
func (e *rleEncoder) flushLiterals() {
	m := len(e.lit) &^ 7
	if m == 0 {
		return
	}
	e.out = binary.AppendUvarint(e.out, uint64(m/8)<<1|1)
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
	e.lit = e.lit[:copy(e.lit, e.lit[m:])]
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
