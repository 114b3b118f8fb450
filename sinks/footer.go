package sinks

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/metadata"
	"github.com/apache/thrift/lib/go/thrift"
)

// This file keeps what a part's footer needs of the row groups it has written, and writes the footer when the
// part closes. A part keeps the metadata of every column chunk until then, and has up to MaxColumnChunks of
// them, over every open part of every table. Made at each row group, the library's metadata builders would hold
// some 400 to 600 bytes per chunk in thrift structures full of pointers; a chunkMeta is 96 bytes without a
// pointer, and the footer is written straight from them (writeFileMetaData), without the builders.

// chunkMeta is what the footer needs of one column chunk.
type chunkMeta struct {
	values       int64 // level entries (num_values)
	dictOffset   int64 // of the dictionary page, when metaDict
	dataOffset   int64 // of the first data page
	compressed   int64 // size in the file, dictionary page included
	uncompressed int64 // size of the pages before compression, headers included
	nulls        int64 // statistics: entries without a value
	distinct     int64 // statistics: distinct values, when metaDistinct
	min, max     valueRef
	dictPages    int32 // data pages dictionary-encoded
	plainPages   int32 // data pages PLAIN
	flags        uint8
}

// valueRef is a statistics value in partMeta.stats.
type valueRef struct{ at, n uint32 }

// chunkMeta flags.
const (
	metaDict     = 1 << iota // a dictionary page comes first
	metaFellBack             // the dictionary reached its limit: PLAIN pages follow
	metaStats                // statistics: the null count at least
	metaMin
	metaMax
	metaDistinct
	metaSigned
)

// groupMeta is what the footer needs of one row group; its chunks are the next len(leaves) in partMeta.chunks.
type groupMeta struct {
	rows, uncompressed int64
}

// partMeta is what the footer of a part needs of the row groups written so far.
type partMeta struct {
	groups []groupMeta
	chunks []chunkMeta // by row group, then leaf
	stats  []byte      // the min and max values of the chunks' statistics
}

// setStats records st as the statistics of cm, copying its min and max.
func (pm *partMeta) setStats(cm *chunkMeta, st metadata.EncodedStatistics) {
	cm.flags |= metaStats
	if st.HasNullCount {
		cm.nulls = st.NullCount
	}
	if st.HasDistinctCount {
		cm.flags |= metaDistinct
		cm.distinct = st.DistinctCount
	}
	if st.Signed {
		cm.flags |= metaSigned
	}
	if st.HasMin {
		cm.flags |= metaMin
		cm.min = pm.keep(st.Min)
	}
	if st.HasMax {
		cm.flags |= metaMax
		cm.max = pm.keep(st.Max)
	}
}

func (pm *partMeta) keep(v []byte) valueRef {
	r := valueRef{at: uint32(len(pm.stats)), n: uint32(len(v))}
	pm.stats = append(pm.stats, v...)
	return r
}

// value returns a statistics value; an empty one is not nil, which the library would leave out of the footer.
func (pm *partMeta) value(r valueRef) []byte {
	if r.n == 0 {
		return []byte{}
	}
	return pm.stats[r.at : r.at+r.n : r.at+r.n]
}

// footerColumn is what every column chunk of a leaf says alike in a footer.
type footerColumn struct {
	ptype, codec, encoding int32
	path                   []string
}

// writeFileMetaData writes the footer of a part of layout l, whose row groups pm describes, to w: the FileMetaData
// of parquet.thrift in Thrift's compact protocol, field for field what the library's metadata builders write
// (metadata.NewFileMetadataBuilder, ColumnChunkMetaDataBuilder.Finish, FileMetaData.WriteTo: TestFooterMatches
// Library holds it to that, byte for byte). It writes straight from pm: the builders make a thrift structure of
// pointers for every column chunk, and took 15% of a two-core run over r4-examples, whose wide types close parts
// of thousands of columns.
func writeFileMetaData(w io.Writer, l *tableLayout, pm *partMeta) error {
	leaves := l.columns
	if len(pm.chunks) != leaves*len(pm.groups) {
		return fmt.Errorf("footer: %d column chunks for %d row groups of %d columns", len(pm.chunks), len(pm.groups), leaves)
	}
	nodes, err := parquetNodes(l.arrow, l.props)
	if err != nil {
		return fmt.Errorf("footer: %w", err)
	}
	lc := leafColumns(nodes)
	if lc.len() != leaves {
		return fmt.Errorf("footer: the schema has %d columns, the layout %d", lc.len(), leaves)
	}
	props := l.props
	cols := make([]footerColumn, leaves)
	for i := range cols {
		path := lc.path(i)
		dotted := dotted(path)
		cols[i] = footerColumn{ptype: int32(nodes[lc.at[i]].ptype), codec: int32(props.CompressionFor(dotted)),
			encoding: int32(props.EncodingFor(dotted)), path: path}
	}
	enc := footerEncodings{page: int32(props.DictionaryPageEncoding()), index: int32(props.DictionaryIndexEncoding())}
	enc.listed = enc.page
	version := int32(2)
	if props.Version() == parquet.V1_0 {
		version = 1
		enc.listed = int32(parquet.Encodings.Plain) // the library lists PLAIN for the dictionary page of V1 files
	}

	tw := newThriftWriter(w)
	tw.structBegin()
	tw.i32(1, version)
	tw.list(2, thrift.STRUCT, len(nodes))
	for i := range nodes {
		tw.writeSchemaElement(&nodes[i])
	}
	var rows int64
	for _, gm := range pm.groups {
		rows += gm.rows
	}
	tw.i64(3, rows)
	tw.list(4, thrift.STRUCT, len(pm.groups))
	for g, gm := range pm.groups {
		chunks := pm.chunks[g*leaves : (g+1)*leaves]
		tw.structBegin()
		tw.list(1, thrift.STRUCT, leaves)
		var compressed, offset int64
		for i := range chunks {
			cm := &chunks[i]
			tw.columnChunk(cm, &cols[i], pm, enc)
			compressed += cm.compressed
		}
		if leaves > 0 {
			offset = chunks[0].dataOffset
			if chunks[0].dictOffset > 0 {
				offset = chunks[0].dictOffset
			}
		}
		tw.i64(2, gm.uncompressed)
		tw.i64(3, gm.rows)
		tw.i64(5, offset)
		tw.i64(6, compressed)
		tw.i16(7, int16(g))
		tw.structEnd()
	}
	kv := l.kv()
	tw.list(5, thrift.STRUCT, kv.Len())
	for i, k := range kv.Keys() {
		tw.structBegin()
		tw.str(1, k)
		tw.str(2, kv.Values()[i])
		tw.structEnd()
	}
	tw.str(6, props.CreatedBy())
	tw.list(7, thrift.STRUCT, leaves) // every column in TYPE_DEFINED_ORDER
	for range leaves {
		tw.structBegin()
		tw.field(1, thrift.STRUCT)
		tw.structBegin()
		tw.structEnd()
		tw.structEnd()
	}
	tw.structEnd()
	return tw.flush()
}

// Page types of parquet.thrift.
const (
	pageData       = 0
	pageDictionary = 2
)

// footerEncodings are the dictionary encodings of the writer properties: of the dictionary page (in the page
// encoding statistics, and as listed among a chunk's encodings) and of the data pages that index it.
type footerEncodings struct{ page, listed, index int32 }

// columnChunk writes the ColumnChunk of cm, a chunk of column c.
func (tw *thriftWriter) columnChunk(cm *chunkMeta, c *footerColumn, pm *partMeta, de footerEncodings) {
	dict := cm.dictOffset > 0
	tw.structBegin()
	if dict {
		tw.i64(2, cm.dictOffset+cm.compressed)
	} else {
		tw.i64(2, cm.dataOffset+cm.compressed)
	}
	tw.field(3, thrift.STRUCT) // ColumnMetaData
	tw.structBegin()
	tw.i32(1, c.ptype)
	var encodings [4]int32
	enc := encodings[:0]
	if cm.flags&metaDict != 0 {
		enc = append(enc, de.index, de.listed)
	} else {
		enc = append(enc, c.encoding)
	}
	enc = append(enc, int32(parquet.Encodings.RLE))
	if cm.flags&metaFellBack != 0 {
		enc = append(enc, int32(parquet.Encodings.Plain))
	}
	tw.list(2, thrift.I32, len(enc))
	for _, e := range enc {
		tw.value32(e)
	}
	tw.list(3, thrift.STRING, len(c.path))
	for _, p := range c.path {
		tw.value(p)
	}
	tw.i32(4, c.codec)
	tw.i64(5, cm.values)
	tw.i64(6, cm.uncompressed)
	tw.i64(7, cm.compressed)
	tw.i64(9, cm.dataOffset)
	if dict {
		tw.i64(11, cm.dictOffset)
	}
	if cm.flags&metaStats != 0 {
		tw.statistics(cm, pm)
	}
	// Page encoding statistics: the dictionary page first, then the data pages by encoding.
	type pages struct{ typ, enc, count int32 }
	var stats [3]pages
	es := stats[:0]
	if cm.flags&metaDict != 0 {
		es = append(es, pages{pageDictionary, de.page, 1})
	}
	plain := pages{pageData, int32(parquet.Encodings.Plain), cm.plainPages}
	indexed := pages{pageData, de.index, cm.dictPages}
	if indexed.enc < plain.enc {
		plain, indexed = indexed, plain
	}
	for _, p := range []pages{plain, indexed} {
		if p.count > 0 {
			es = append(es, p)
		}
	}
	tw.list(13, thrift.STRUCT, len(es))
	for _, p := range es {
		tw.structBegin()
		tw.i32(1, p.typ)
		tw.i32(2, p.enc)
		tw.i32(3, p.count)
		tw.structEnd()
	}
	tw.structEnd() // ColumnMetaData
	tw.structEnd()
}

// statistics writes the Statistics of cm as field 12 of its ColumnMetaData: min and max in the fields of either
// sort order, and in the legacy ones too when the order is signed.
func (tw *thriftWriter) statistics(cm *chunkMeta, pm *partMeta) {
	signed := cm.flags&metaSigned != 0
	tw.field(12, thrift.STRUCT)
	tw.structBegin()
	if signed && cm.flags&metaMax != 0 {
		tw.bin(1, pm.value(cm.max))
	}
	if signed && cm.flags&metaMin != 0 {
		tw.bin(2, pm.value(cm.min))
	}
	tw.i64(3, cm.nulls)
	if cm.flags&metaDistinct != 0 {
		tw.i64(4, cm.distinct)
	}
	if cm.flags&metaMax != 0 {
		tw.bin(5, pm.value(cm.max))
	}
	if cm.flags&metaMin != 0 {
		tw.bin(6, pm.value(cm.min))
	}
	tw.structEnd()
}

// thriftWriter writes Thrift's compact protocol, keeping the first error.
type thriftWriter struct {
	ctx context.Context
	p   *thrift.TCompactProtocol
	err error
}

func newThriftWriter(w io.Writer) *thriftWriter {
	return &thriftWriter{ctx: context.Background(),
		p: thrift.NewTCompactProtocolConf(thrift.NewStreamTransportW(w), &thrift.TConfiguration{})}
}

func (tw *thriftWriter) keep(err error) {
	if tw.err == nil {
		tw.err = err
	}
}

func (tw *thriftWriter) structBegin() { tw.keep(tw.p.WriteStructBegin(tw.ctx, "")) }

// structEnd ends a struct, and the field that holds it if any (a field's end writes nothing).
func (tw *thriftWriter) structEnd() {
	tw.keep(tw.p.WriteFieldStop(tw.ctx))
	tw.keep(tw.p.WriteStructEnd(tw.ctx))
}

func (tw *thriftWriter) field(id int16, t thrift.TType) {
	tw.keep(tw.p.WriteFieldBegin(tw.ctx, "", t, id))
}

func (tw *thriftWriter) list(id int16, elem thrift.TType, n int) {
	tw.field(id, thrift.LIST)
	tw.keep(tw.p.WriteListBegin(tw.ctx, elem, n))
}

func (tw *thriftWriter) i16(id int16, v int16) {
	tw.field(id, thrift.I16)
	tw.keep(tw.p.WriteI16(tw.ctx, v))
}

func (tw *thriftWriter) i32(id int16, v int32) {
	tw.field(id, thrift.I32)
	tw.value32(v)
}

func (tw *thriftWriter) value32(v int32) { tw.keep(tw.p.WriteI32(tw.ctx, v)) }

func (tw *thriftWriter) i64(id int16, v int64) {
	tw.field(id, thrift.I64)
	tw.keep(tw.p.WriteI64(tw.ctx, v))
}

func (tw *thriftWriter) str(id int16, s string) {
	tw.field(id, thrift.STRING)
	tw.value(s)
}

func (tw *thriftWriter) value(s string) { tw.keep(tw.p.WriteString(tw.ctx, s)) }

func (tw *thriftWriter) bin(id int16, b []byte) {
	tw.field(id, thrift.STRING)
	tw.keep(tw.p.WriteBinary(tw.ctx, b))
}

func (tw *thriftWriter) i8(id int16, v int8) {
	tw.field(id, thrift.BYTE)
	tw.keep(tw.p.WriteByte(tw.ctx, v))
}

func (tw *thriftWriter) boolean(id int16, v bool) {
	tw.field(id, thrift.BOOL)
	tw.keep(tw.p.WriteBool(tw.ctx, v))
}

// emptyStruct writes field id holding a struct without fields.
func (tw *thriftWriter) emptyStruct(id int16) {
	tw.field(id, thrift.STRUCT)
	tw.structBegin()
	tw.structEnd()
}

func (tw *thriftWriter) flush() error {
	tw.keep(tw.p.Flush(tw.ctx))
	return tw.err
}

// footerBytes is about what the footer of a part of l with rowGroups row groups takes: the key-value metadata (the
// Arrow schema, about 90 bytes per leaf) and about 110 to 190 bytes per column chunk (135 for most of the tables
// of synthea-100 and r4-examples).
func (l *tableLayout) footerBytes(rowGroups int) int64 {
	kv := l.kv()
	n := int64(150 * l.columns * rowGroups)
	for i, k := range kv.Keys() {
		n += int64(len(k) + len(kv.Values()[i]))
	}
	return n
}

// writeFooter writes the file metadata of p, a part of layout l, its length and the closing magic.
func writeFooter(l *tableLayout, p *part) error {
	start := p.sink.n
	if err := writeFileMetaData(&p.sink, l, &p.meta); err != nil {
		return err
	}
	p.sink.Write(binary.LittleEndian.AppendUint32(nil, uint32(p.sink.n-start)))
	p.sink.Write(parquetMagic)
	return p.sink.err
}
