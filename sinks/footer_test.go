package sinks

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
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
