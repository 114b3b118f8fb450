package sinks

import (
	"encoding/binary"
	"fmt"

	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/metadata"
)

// This file keeps what a part's footer needs of the row groups it has written, and writes the footer when the
// part closes. A part keeps the metadata of every column chunk until then, and has up to MaxColumnChunks of
// them, over every open part of every table. Made at each row group, the library's metadata builders would hold
// some 400 to 600 bytes per chunk in thrift structures full of pointers; a chunkMeta is 96 bytes without a
// pointer, and the builders live only while the footer is written.

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

func (pm *partMeta) value(r valueRef) []byte { return pm.stats[r.at : r.at+r.n : r.at+r.n] }

// encoded returns the statistics of cm as the library takes them.
func (pm *partMeta) encoded(cm *chunkMeta) metadata.EncodedStatistics {
	st := metadata.EncodedStatistics{
		HasNullCount: true, NullCount: cm.nulls,
		HasDistinctCount: cm.flags&metaDistinct != 0, DistinctCount: cm.distinct,
		Signed: cm.flags&metaSigned != 0,
	}
	if cm.flags&metaMin != 0 {
		st.HasMin, st.Min = true, pm.value(cm.min)
	}
	if cm.flags&metaMax != 0 {
		st.HasMax, st.Max = true, pm.value(cm.max)
	}
	return st
}

// fileMetaData builds the footer of a part of layout l whose row groups pm describes.
func (l *tableLayout) fileMetaData(pm *partMeta) (*metadata.FileMetaData, error) {
	leaves := l.columns
	if len(pm.chunks) != leaves*len(pm.groups) {
		return nil, fmt.Errorf("footer: %d column chunks for %d row groups of %d columns", len(pm.chunks), len(pm.groups), leaves)
	}
	ps, err := l.parquetSchema()
	if err != nil {
		return nil, err
	}
	b := metadata.NewFileMetadataBuilder(ps, l.props, l.keyValueMetadata())
	shared := map[sharedKey]any{}
	for g, gm := range pm.groups {
		rg := b.AppendRowGroup()
		rg.SetNumRows(int(gm.rows))
		for i := range leaves {
			cm := &pm.chunks[g*leaves+i]
			cc := rg.NextColumnChunk()
			if cm.flags&metaStats != 0 {
				cc.SetStats(pm.encoded(cm))
			}
			encStats := metadata.EncodingStats{DataEncodingStats: map[parquet.Encoding]int32{}}
			if cm.flags&metaDict != 0 {
				encStats.DictEncodingStats = map[parquet.Encoding]int32{l.props.DictionaryPageEncoding(): 1}
			}
			if cm.dictPages > 0 {
				encStats.DataEncodingStats[l.props.DictionaryIndexEncoding()] = cm.dictPages
			}
			if cm.plainPages > 0 {
				encStats.DataEncodingStats[parquet.Encodings.Plain] = cm.plainPages
			}
			err := cc.Finish(metadata.ChunkMetaInfo{
				NumValues:        cm.values,
				DictPageOffset:   cm.dictOffset,
				IndexPageOffset:  -1,
				DataPageOffset:   cm.dataOffset,
				CompressedSize:   cm.compressed,
				UncompressedSize: cm.uncompressed,
			}, cm.flags&metaDict != 0, cm.flags&metaFellBack != 0, encStats, nil)
			if err != nil {
				return nil, fmt.Errorf("footer: column %s: %w", ps.Column(i).Path(), err)
			}
			shareMeta(shared, cc, ps.Column(i).ColumnPath())
		}
		if err := rg.Finish(gm.uncompressed, int16(g)); err != nil {
			return nil, fmt.Errorf("footer: row group %d: %w", g, err)
		}
	}
	return b.Finish()
}

// footerBytes is about what the footer of a part of l with rowGroups row groups takes: the key-value metadata (the
// Arrow schema, about 90 bytes per leaf) and about 110 to 190 bytes per column chunk (135 for most of the tables
// of synthea-100 and r4-examples).
func (l *tableLayout) footerBytes(rowGroups int) int64 {
	return l.metaBytes + int64(150*l.columns*rowGroups)
}

// writeFooter writes the file metadata of p, a part of layout l, its length and the closing magic.
func writeFooter(l *tableLayout, p *part) error {
	fmd, err := l.fileMetaData(&p.meta)
	if err != nil {
		return err
	}
	start := p.sink.n
	if _, err := fmd.WriteTo(&p.sink, nil); err != nil {
		return err
	}
	p.sink.Write(binary.LittleEndian.AppendUint32(nil, uint32(p.sink.n-start)))
	p.sink.Write(parquetMagic)
	return p.sink.err
}

// sharedKey names a piece of chunk metadata that many chunks of a part have alike.
type sharedKey struct {
	kind byte // 's' statistics without min and max, 'e' encodings, 'p' page encoding statistics
	a, b int64
}

// shareMeta replaces the pieces of cc's metadata that many chunks have alike by one copy per footer, and puts its
// page encoding statistics in a fixed order (the library fills them from maps). In a wide table most chunks are
// a page of levels with the same path, encodings and statistics but for the null count.
func shareMeta(m map[sharedKey]any, cc *metadata.ColumnChunkMetaDataBuilder, path []string) {
	md := cc.Contents().MetaData
	md.PathInSchema = path
	if st := md.Statistics; st != nil && st.Max == nil && st.Min == nil && st.MaxValue == nil && st.MinValue == nil &&
		st.NullCount != nil && st.DistinctCount == nil {
		md.Statistics = shared(m, sharedKey{'s', *st.NullCount, 0}, st)
	}
	var enc int64
	for _, e := range md.Encodings {
		enc = enc<<8 | int64(e)&0xff
	}
	if len(md.Encodings) <= 8 {
		md.Encodings = shared(m, sharedKey{'e', enc, int64(len(md.Encodings))}, md.Encodings)
	}
	es := md.EncodingStats // dictionary page first, then by encoding: at most three
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && (es[j].PageType > es[j-1].PageType ||
			es[j].PageType == es[j-1].PageType && es[j].Encoding < es[j-1].Encoding); j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
	if len(md.EncodingStats) == 1 {
		es := md.EncodingStats[0]
		md.EncodingStats = shared(m, sharedKey{'p', int64(es.PageType)<<8 | int64(es.Encoding), int64(es.Count)},
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
