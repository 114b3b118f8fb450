package sinks

import (
	"bytes"
	"context"
	"fmt"
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

// edgeRecord builds n rows whose shapes pick chooses: pick(k) returns a number in [0, k).
func edgeRecord(mem memory.Allocator, start, n int, pick func(k int) int) arrow.Record {
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
		shape := pick(7)
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
				appendInner(item, i+k, pick(5))
			}
		}
		appendInner(one, i, pick(5))
	}
	return rb.NewRecord()
}

// TestLeafWriterMatchesPqarrow writes edge-case records through a Table (row groups of 3 rows, so groups cut
// records) and through pqarrow's writer, and reads both back: the values must be equal.
func TestLeafWriterMatchesPqarrow(t *testing.T) {
	mem := checkedAllocator(t)
	var recs []arrow.Record
	next := 0
	cycle := func(k int) int { next++; return next % k } // every shape, in turn
	for i, n := range []int{1, 7, 10, 4} {
		recs = append(recs, edgeRecord(mem, i*100, n, cycle))
	}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	for _, rows := range []int{3, 64} {
		if err := compareWithPqarrow(recs, rows, mem); err != nil {
			t.Errorf("row groups of %d: %v", rows, err)
		}
	}
}

// FuzzLeafWriter compares the leaf writer with pqarrow's on records whose shapes the input picks, cut into row
// groups of 1 to 8 rows.
func FuzzLeafWriter(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{7, 2, 1, 0, 3, 4, 6, 5, 2, 2, 0, 1})
	f.Add([]byte{40, 0, 6, 6, 6, 6, 4, 4, 4, 4, 3, 3, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		pos := 0
		pick := func(k int) int {
			v := int(data[pos%len(data)])
			pos++
			return v % k
		}
		rows := 1 + int(data[0])%40
		first := rows / 2
		var recs []arrow.Record
		if first > 0 {
			recs = append(recs, edgeRecord(mem, 0, first, pick))
		}
		recs = append(recs, edgeRecord(mem, first, rows-first, pick))
		err := compareWithPqarrow(recs, 1+pick(8), mem)
		for _, r := range recs {
			r.Release()
		}
		if err != nil {
			t.Fatal(err)
		}
		mem.AssertSize(t, 0)
	})
}

// compareWithPqarrow writes recs through a Table with row groups of rows rows and through pqarrow's writer, reads
// both back, and says where they differ.
func compareWithPqarrow(recs []arrow.Record, rows int, mem memory.Allocator) error {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	tbl := NewTable(b, "out", "Basic", edgeSchema(), ParquetOptions{RowGroupRows: rows, Allocator: mem})
	var want int64
	for _, r := range recs {
		want += r.NumRows()
		if err := tbl.Write(ctx, r); err != nil {
			return err
		}
	}
	files, err := tbl.Close(ctx)
	if err != nil || len(files) != 1 {
		return fmt.Errorf("close: %v, %v", files, err)
	}
	data, err := b.ReadAll(ctx, "out/"+files[0].Key)
	if err != nil {
		return err
	}
	var ref bytes.Buffer
	fw, err := pqarrow.NewFileWriter(edgeSchema(), &ref, parquet.NewWriterProperties(parquet.WithAllocator(mem)),
		pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema(), pqarrow.WithAllocator(mem)))
	if err != nil {
		return err
	}
	for _, r := range recs {
		if err := fw.Write(r); err != nil {
			return err
		}
	}
	if err := fw.Close(); err != nil {
		return err
	}
	got, err := readArrowTable(data, mem)
	if err != nil {
		return err
	}
	defer got.Release()
	wantTbl, err := readArrowTable(ref.Bytes(), mem)
	if err != nil {
		return err
	}
	defer wantTbl.Release()
	if got.NumRows() != want || wantTbl.NumRows() != want {
		return fmt.Errorf("rows: ours %d, pqarrow %d, want %d", got.NumRows(), wantTbl.NumRows(), want)
	}
	for i := 0; i < int(wantTbl.NumCols()); i++ {
		if !array.ChunkedEqual(got.Column(i).Data(), wantTbl.Column(i).Data()) {
			return fmt.Errorf("column %s differs from pqarrow's", wantTbl.Schema().Field(i).Name)
		}
	}
	return nil
}

func readArrowTable(data []byte, mem memory.Allocator) (arrow.Table, error) {
	pf, err := file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, mem)
	if err != nil {
		return nil, err
	}
	return fr.ReadTable(context.Background())
}
