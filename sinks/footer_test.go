package sinks

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/metadata"

	"github.com/fhirlake/fhirlake/schema"
)

// TestFooterDeterministic: the same records make the same file, byte for byte, and the page encoding statistics
// of a chunk list its dictionary page first, then its data pages by encoding. The library fills them from maps:
// a chunk that falls back from its dictionary to PLAIN pages had them in either order.
func TestFooterDeterministic(t *testing.T) {
	mem := checkedAllocator(t)
	s := arrow.NewSchema([]arrow.Field{
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "n", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
	}, nil)
	const rows, groupRows = 9000, 3000
	rb := array.NewRecordBuilder(mem, s)
	defer rb.Release()
	pad := strings.Repeat("x", 600) // distinct values of 600 bytes: a row group of 3,000 outgrows the 1 MiB dictionary
	for i := range rows {
		rb.Field(0).(*array.StringBuilder).Append(fmt.Sprintf("%05d%s", (i*7919)%rows, pad))
		rb.Field(1).(*array.Int64Builder).Append(int64(i % 10))
	}
	rec := rb.NewRecord()
	defer rec.Release()

	var first []byte
	for i := range 6 {
		data, err := writeOurs([]arrow.Record{rec}, groupRows, mem)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = data
		} else if !bytes.Equal(data, first) {
			t.Fatalf("write %d made a different file (%d bytes against %d)", i, len(data), len(first))
		}
	}

	f, err := file.NewParquetReader(bytes.NewReader(first), file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := f.NumRowGroups(); n != rows/groupRows {
		t.Fatalf("%d row groups, want %d", n, rows/groupRows)
	}
	for g := range f.NumRowGroups() {
		cc, err := f.MetaData().RowGroup(g).ColumnChunk(0)
		if err != nil {
			t.Fatal(err)
		}
		es := cc.EncodingStats()
		var got []string
		for _, e := range es {
			got = append(got, fmt.Sprintf("%d/%s", int(e.PageType), e.Encoding))
		}
		if len(es) != 3 || int(es[0].PageType) != 2 || int(es[1].PageType) != 0 || int(es[2].PageType) != 0 ||
			es[1].Encoding >= es[2].Encoding {
			t.Errorf("row group %d, column s: page encoding statistics %v; want the dictionary page, then data pages of two encodings in order",
				g, got)
		}
	}
}

// TestChunkMetaCompact: what a part keeps of each column chunk until its footer holds no pointer for the
// collector to follow, and stays small: a part has up to MaxColumnChunks of them.
func TestChunkMetaCompact(t *testing.T) {
	for _, v := range []any{chunkMeta{}, groupMeta{}} {
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			switch k := typ.Field(i).Type.Kind(); k {
			case reflect.Pointer, reflect.Slice, reflect.Map, reflect.String, reflect.Interface, reflect.Func, reflect.Chan:
				t.Errorf("%s.%s is a %s", typ.Name(), typ.Field(i).Name, k)
			}
		}
	}
	if n := unsafe.Sizeof(chunkMeta{}); n > 96 {
		t.Errorf("a chunkMeta takes %d bytes, want at most 96", n)
	}
}

// TestFooterMatchesLibrary: writeFileMetaData writes, byte for byte, the footer that the library's metadata
// builders make of the same row groups (libraryFooter): for the schema of every R4 type, with V2 and V1 writer
// properties, no row group or several, and chunks of every kind (dictionary or not, fallen back to PLAIN,
// statistics signed or not, with or without min, max and distinct count, an empty min, offsets past 4 GiB).
func TestFooterMatchesLibrary(t *testing.T) {
	reg, err := schema.New(schema.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v2 := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Zstd))
	v1 := parquet.NewWriterProperties(parquet.WithVersion(parquet.V1_0), parquet.WithCompression(compress.Codecs.Snappy))
	for n, typ := range reg.Types() {
		res, err := reg.Build(typ)
		if err != nil {
			t.Fatal(err)
		}
		for _, props := range []*parquet.WriterProperties{v2, v1} {
			if props == v1 && n%7 != 0 {
				continue // V1 for every seventh type: the schemas are the same, the chunks vary with the seed
			}
			l, err := newTableLayout(res.Schema, props)
			if err != nil {
				t.Fatal(err)
			}
			for _, groups := range []int{0, 2} {
				pm := syntheticPartMeta(l.columns, groups, n)
				want, err := libraryFooter(l, pm)
				if err != nil {
					t.Fatal(err)
				}
				var got bytes.Buffer
				if err := writeFileMetaData(&got, l, pm); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got.Bytes(), want) {
					i := 0
					for i < min(got.Len(), len(want)) && got.Bytes()[i] == want[i] {
						i++
					}
					t.Fatalf("%s, version %v, %d row groups: footer of %d bytes differs from the library's (%d bytes) at byte %d",
						typ, props.Version(), groups, got.Len(), len(want), i)
				}
			}
		}
	}
}

// syntheticPartMeta returns row groups of leaves columns whose chunks take every kind in turn, from seed.
func syntheticPartMeta(leaves, groups, seed int) *partMeta {
	pm := &partMeta{}
	off := int64(len(parquetMagic))
	if seed%5 == 4 {
		off = 5 << 30 // past what 32 bits hold
	}
	for g := range groups {
		var uncompressed int64
		for i := range leaves {
			k := (seed + 3*g + i) % 9
			if seed == 5 {
				k = 5 // only empty statistics values in the part
			}
			cm := chunkMeta{values: int64(100 + i%1000), compressed: int64(40 + i%13), uncompressed: int64(70 + i%17)}
			st := metadata.EncodedStatistics{HasNullCount: true, NullCount: int64(i % 5)}
			switch k {
			case 0: // PLAIN, null count only
				cm.dataOffset, cm.plainPages = off, 1
			case 1: // dictionary, signed min and max
				cm.flags |= metaDict
				cm.dictOffset, cm.dataOffset, cm.dictPages = off, off+17, 2
				st.HasMin, st.Min, st.HasMax, st.Max, st.Signed = true, []byte{1, 0, 0, 0, 0, 0, 0, 0}, true, []byte{9, 1, 0, 0, 0, 0, 0, 0}, true
			case 2: // dictionary fallen back to PLAIN, unsigned min and max
				cm.flags |= metaDict | metaFellBack
				cm.dictOffset, cm.dataOffset, cm.dictPages, cm.plainPages = off, off+23, 1, 3
				st.HasMin, st.Min, st.HasMax, st.Max = true, []byte("abc"), true, []byte("abd")
			case 3: // no statistics
				cm.dataOffset, cm.plainPages = off, 4
			case 4: // a distinct count
				cm.dataOffset, cm.plainPages = off, 1
				st.HasDistinctCount, st.DistinctCount = true, int64(i%7)
			case 5: // an empty min; with seed 5, the part's only values are empty: they are not left out
				cm.flags |= metaDict
				cm.dictOffset, cm.dataOffset, cm.dictPages = off, off+5, 1
				st.HasMin, st.Min, st.HasMax, st.Max = true, []byte{}, true, []byte("z")
				if seed == 5 {
					st.Max = []byte{}
				}
			case 6: // many pages, max only
				cm.flags |= metaDict
				cm.dictOffset, cm.dataOffset, cm.dictPages = off, off+31, 40
				st.HasMax, st.Max, st.Signed = true, []byte{0xff}, true
			case 7: // a dictionary page at offset 0 cannot be: a chunk with the dictionary flag but no offset
				cm.flags |= metaDict
				cm.dataOffset, cm.dictPages = off, 1
			default: // min only, unsigned
				cm.dataOffset, cm.plainPages = off, 2
				st.HasMin, st.Min = true, []byte("m")
			}
			if k != 3 {
				pm.setStats(&cm, st)
			}
			off += cm.compressed
			uncompressed += cm.uncompressed
			pm.chunks = append(pm.chunks, cm)
		}
		pm.groups = append(pm.groups, groupMeta{rows: int64(1000 + g), uncompressed: uncompressed})
	}
	return pm
}

// libraryFooter is the footer that the library's metadata builders make of the row groups pm describes, for
// a part of layout l: what writeFileMetaData must write. The builders fill a chunk's page encoding statistics from
// maps; they are put in writeFileMetaData's order (the dictionary page first, then the data pages by encoding).
func libraryFooter(l *tableLayout, pm *partMeta) ([]byte, error) {
	leaves := l.columns
	ps, err := l.parquetSchema()
	if err != nil {
		return nil, err
	}
	b := metadata.NewFileMetadataBuilder(ps, l.props, l.keyValueMetadata())
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
				return nil, err
			}
			es := cc.Contents().MetaData.EncodingStats
			sort.Slice(es, func(i, j int) bool {
				return es[i].PageType > es[j].PageType || es[i].PageType == es[j].PageType && es[i].Encoding < es[j].Encoding
			})
		}
		if err := rg.Finish(gm.uncompressed, int16(g)); err != nil {
			return nil, err
		}
	}
	fmd, err := b.Finish()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := fmd.WriteTo(&buf, nil); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// encoded returns the statistics of cm as the library's builders take them.
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
