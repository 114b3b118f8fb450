package sinks

import (
	"bytes"
	"context"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"gocloud.dev/blob/memblob"
)

// edgeSchema has every shape the leaf writer handles: lists of lists, nulls at every level (a null list, an empty
// list, a null element, a null struct in a list, a struct whose fields are all null), required fields, and every
// leaf type.
func edgeSchema() *arrow.Schema {
	inner := arrow.StructOf(
		arrow.Field{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
		arrow.Field{Name: "n", Type: arrow.PrimitiveTypes.Int64, Nullable: false},
		arrow.Field{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
	)
	md := arrow.NewMetadata([]string{"fhir.resource_type"}, []string{"Basic"})
	return arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String, Nullable: false},
		{Name: "b", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
		{Name: "f", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "bin", Type: arrow.BinaryTypes.Binary, Nullable: true},
		{Name: "ts", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, Nullable: true},
		{Name: "grid", Type: arrow.ListOf(arrow.ListOf(arrow.PrimitiveTypes.Int64)), Nullable: true},
		{Name: "items", Type: arrow.ListOf(inner), Nullable: true},
		{Name: "one", Type: inner, Nullable: true},
	}, &md)
}

// edgeRecord builds n rows; row i takes shape i%7 for each nested column.
func edgeRecord(t *testing.T, mem memory.Allocator, start, n int) arrow.Record {
	t.Helper()
	rb := array.NewRecordBuilder(mem, edgeSchema())
	defer rb.Release()
	id := rb.Field(0).(*array.StringBuilder)
	bb := rb.Field(1).(*array.BooleanBuilder)
	fb := rb.Field(2).(*array.Float64Builder)
	bin := rb.Field(3).(*array.BinaryBuilder)
	ts := rb.Field(4).(*array.TimestampBuilder)
	grid := rb.Field(5).(*array.ListBuilder)
	row := grid.ValueBuilder().(*array.ListBuilder)
	cell := row.ValueBuilder().(*array.Int64Builder)
	items := rb.Field(6).(*array.ListBuilder)
	item := items.ValueBuilder().(*array.StructBuilder)
	one := rb.Field(7).(*array.StructBuilder)
	appendInner := func(sb *array.StructBuilder, i, shape int) {
		s := sb.FieldBuilder(0).(*array.StringBuilder)
		nb := sb.FieldBuilder(1).(*array.Int64Builder)
		tags := sb.FieldBuilder(2).(*array.ListBuilder)
		tag := tags.ValueBuilder().(*array.StringBuilder)
		switch shape {
		case 0:
			sb.AppendNull() // appends a null to every field too
		case 1: // present, every optional field null
			sb.Append(true)
			s.AppendNull()
			nb.Append(int64(i))
			tags.AppendNull()
		case 2:
			sb.Append(true)
			s.Append("")
			nb.Append(-1)
			tags.AppendEmptyValue()
		default:
			sb.Append(true)
			s.Append("s" + string(rune('a'+i%26)))
			nb.Append(int64(i * shape))
			tags.Append(true)
			for k := range shape {
				if k == 1 {
					tag.AppendNull()
				} else {
					tag.Append(string(rune('A' + k)))
				}
			}
		}
	}
	for i := start; i < start+n; i++ {
		shape := i % 7
		id.Append(string(rune('a'+i%26)) + "-id")
		if shape == 0 {
			bb.AppendNull()
			fb.AppendNull()
			bin.AppendNull()
			ts.AppendNull()
		} else {
			bb.Append(i%2 == 0)
			fb.Append(float64(i) / 3)
			bin.Append([]byte{byte(i), 0, byte(shape)})
			ts.Append(arrow.Timestamp(int64(i) * 1e6))
		}
		switch shape {
		case 0:
			grid.AppendNull()
		case 1:
			grid.AppendEmptyValue()
		default:
			grid.Append(true)
			for r := range shape - 1 {
				switch {
				case r == 1:
					row.AppendNull()
				case r == 2:
					row.AppendEmptyValue()
				default:
					row.Append(true)
					for c := range shape {
						if c == 2 {
							cell.AppendNull()
						} else {
							cell.Append(int64(i*10 + c))
						}
					}
				}
			}
		}
		switch shape {
		case 0:
			items.AppendNull()
		case 1:
			items.AppendEmptyValue()
		default:
			items.Append(true)
			for k := range shape {
				appendInner(item, i+k, (shape+k)%5)
			}
		}
		appendInner(one, i, shape%5)
	}
	return rb.NewRecord()
}

// TestLeafWriterMatchesPqarrow writes edge-case records through a Table (row groups of 3 rows, so groups cut
// records) and through pqarrow's writer, and reads both back: the values must be equal.
func TestLeafWriterMatchesPqarrow(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	var recs []arrow.Record
	for i, n := range []int{1, 7, 10, 4} {
		recs = append(recs, edgeRecord(t, mem, i*100, n))
	}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	for _, rows := range []int{3, 64} {
		b := memblob.OpenBucket(nil)
		tbl := NewTable(b, "out", "Basic", edgeSchema(), ParquetOptions{RowGroupRows: rows, Allocator: mem})
		for _, r := range recs {
			if err := tbl.Write(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		files, err := tbl.Close(ctx)
		if err != nil || len(files) != 1 {
			t.Fatalf("Close: %v, %v", files, err)
		}
		data, err := b.ReadAll(ctx, "out/"+files[0].Key)
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
		var ref bytes.Buffer
		fw, err := pqarrow.NewFileWriter(edgeSchema(), &ref, parquet.NewWriterProperties(parquet.WithAllocator(mem)),
			pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema(), pqarrow.WithAllocator(mem)))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if err := fw.Write(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := fw.Close(); err != nil {
			t.Fatal(err)
		}
		got, want := readArrowTable(t, data, mem), readArrowTable(t, ref.Bytes(), mem)
		if got.NumRows() != 22 || want.NumRows() != 22 {
			t.Fatalf("rows: ours %d, pqarrow %d, want 22", got.NumRows(), want.NumRows())
		}
		for i := 0; i < int(want.NumCols()); i++ {
			if !array.ChunkedEqual(got.Column(i).Data(), want.Column(i).Data()) {
				t.Errorf("row groups of %d: column %s differs from pqarrow's", rows, want.Schema().Field(i).Name)
			}
		}
		got.Release()
		want.Release()
	}
}

func readArrowTable(t *testing.T, data []byte, mem memory.Allocator) arrow.Table {
	t.Helper()
	pf, err := file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, mem)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}
