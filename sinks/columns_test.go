package sinks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/metadata"
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
	// Records of one shape: whole subtrees null in every row, so that many chunks hold no value and share their
	// levels.
	for shape := range 3 {
		recs = append(recs, edgeRecord(mem, 500+shape*10, 5, func(k int) int { return shape % k }))
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
	if err := compareStatsWithPqarrow(recs, mem); err != nil {
		t.Error(err)
	}
}

// FuzzLeafWriter compares the leaf writer with pqarrow's on records whose shapes the input picks, cut into row
// groups of 1 to 8 rows, and the statistics of the whole as one row group.
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
		if err == nil {
			err = compareStatsWithPqarrow(recs, mem)
		}
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
	data, err := writeOurs(recs, rows, mem)
	if err != nil {
		return err
	}
	return compareFileWithPqarrow(data, recs, mem)
}

// compareFileWithPqarrow compares data, a file of ours written from recs, with pqarrow's.
func compareFileWithPqarrow(data []byte, recs []arrow.Record, mem memory.Allocator) error {
	ref, err := writePqarrow(recs, mem)
	if err != nil {
		return err
	}
	var want int64
	for _, r := range recs {
		want += r.NumRows()
	}
	got, err := readArrowTable(data, mem)
	if err != nil {
		return err
	}
	defer got.Release()
	wantTbl, err := readArrowTable(ref, mem)
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

// writeOurs writes recs through a Table with row groups of rows rows and returns the one part file. It writes a
// copy of each record and overwrites the copy's memory once Write returns, since the Table must keep nothing of
// it (values, dictionary entries, statistics) beyond that.
func writeOurs(recs []arrow.Record, rows int, mem memory.Allocator) ([]byte, error) {
	return writeTable(recs, rows, mem, true)
}

// writeTable is writeOurs, which copies is true for; false writes the records as given (a slice of a record
// keeps its offset into the arrays).
func writeTable(recs []arrow.Record, rows int, mem memory.Allocator, copies bool) ([]byte, error) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	tbl := NewTable(b, "out", "Basic", recs[0].Schema(), ParquetOptions{RowGroupRows: rows, Allocator: mem})
	for _, r := range recs {
		if !copies {
			if err := tbl.Write(ctx, r); err != nil {
				return nil, err
			}
			continue
		}
		c, err := concatRecords([]arrow.Record{r}, mem)
		if err != nil {
			return nil, err
		}
		err = tbl.Write(ctx, c)
		for _, col := range c.Columns() {
			clobber(col.Data())
		}
		c.Release()
		if err != nil {
			return nil, err
		}
	}
	files, err := tbl.Close(ctx)
	if err != nil || len(files) != 1 {
		return nil, fmt.Errorf("close: %v, %v", files, err)
	}
	return b.ReadAll(ctx, "out/"+files[0].Key)
}

// clobber overwrites the memory of d and its children.
func clobber(d arrow.ArrayData) {
	for _, b := range d.Buffers() {
		if b != nil {
			for i := range b.Bytes() {
				b.Bytes()[i] = 0xa5
			}
		}
	}
	for _, c := range d.Children() {
		clobber(c)
	}
}

// writePqarrow writes recs with pqarrow's writer, a row group for each.
func writePqarrow(recs []arrow.Record, mem memory.Allocator) ([]byte, error) {
	var ref bytes.Buffer
	fw, err := pqarrow.NewFileWriter(recs[0].Schema(), &ref, parquet.NewWriterProperties(parquet.WithAllocator(mem)),
		pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema(), pqarrow.WithAllocator(mem)))
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if err := fw.Write(r); err != nil {
			return nil, err
		}
	}
	if err := fw.Close(); err != nil {
		return nil, err
	}
	return ref.Bytes(), nil
}

// compareStatsWithPqarrow writes recs as one row group through a Table (a Write each) and through pqarrow's
// writer, and compares the metadata of every column chunk that readers use: the number of values, and the
// statistics (min, max, null count) that BigQuery, DuckDB and Spark prune row groups by.
func compareStatsWithPqarrow(recs []arrow.Record, mem memory.Allocator) error {
	rec, err := concatRecords(recs, mem)
	if err != nil {
		return err
	}
	defer rec.Release()
	ours, err := writeOurs(recs, int(rec.NumRows()), mem)
	if err != nil {
		return err
	}
	ref, err := writePqarrow([]arrow.Record{rec}, mem)
	if err != nil {
		return err
	}
	open := func(data []byte) (*file.Reader, error) {
		return file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(parquet.NewReaderProperties(mem)))
	}
	o, err := open(ours)
	if err != nil {
		return fmt.Errorf("ours: %w", err)
	}
	defer o.Close()
	r, err := open(ref)
	if err != nil {
		return err
	}
	defer r.Close()
	if o.NumRowGroups() != 1 || r.NumRowGroups() != 1 {
		return fmt.Errorf("row groups: ours %d, pqarrow %d", o.NumRowGroups(), r.NumRowGroups())
	}
	og, rg := o.MetaData().RowGroup(0), r.MetaData().RowGroup(0)
	var errs []error
	if og.NumRows() != rg.NumRows() {
		return fmt.Errorf("rows: ours %d, pqarrow %d", og.NumRows(), rg.NumRows())
	}
	for i := 0; i < rg.NumColumns(); i++ {
		oc, err := og.ColumnChunk(i)
		if err != nil {
			return err
		}
		rc, err := rg.ColumnChunk(i)
		if err != nil {
			return err
		}
		path := rc.PathInSchema().String()
		if oc.PathInSchema().String() != path {
			return fmt.Errorf("column %d: path %s, pqarrow %s", i, oc.PathInSchema(), path)
		}
		if oc.NumValues() != rc.NumValues() {
			return fmt.Errorf("%s: %d values, pqarrow %d", path, oc.NumValues(), rc.NumValues())
		}
		oset, err := oc.StatsSet()
		if err != nil {
			return err
		}
		rset, err := rc.StatsSet()
		if err != nil {
			return err
		}
		if oset != rset {
			return fmt.Errorf("%s: statistics set %v, pqarrow %v", path, oset, rset)
		}
		if !oset {
			continue
		}
		os, err := oc.Statistics()
		if err != nil {
			return err
		}
		rs, err := rc.Statistics()
		if err != nil {
			return err
		}
		oe, err := os.Encode()
		if err != nil {
			return err
		}
		re, err := rs.Encode()
		if err != nil {
			return err
		}
		// Min and max must be those of the values in the chunk. pqarrow's are not always: it leaves them out for
		// some nested columns (lists of lists with null elements) and for columns whose values are all empty
		// strings, and writes MaxInt64 and MinInt64 for an int64 column in a list without a value. Where its
		// statistics are those of the values, they must be ours.
		te, err := valueStats(o, i, mem)
		if err != nil {
			return err
		}
		if oe.HasNullCount != re.HasNullCount || oe.NullCount != re.NullCount ||
			te.HasMin && re.HasMin && !bytes.Equal(oe.Min, re.Min) || te.HasMax && re.HasMax && !bytes.Equal(oe.Max, re.Max) {
			errs = append(errs, fmt.Errorf("%s: statistics %s, pqarrow %s", path, statString(oe), statString(re)))
		}
		if oe.HasMin != te.HasMin || oe.HasMax != te.HasMax || oe.HasMin && !bytes.Equal(oe.Min, te.Min) ||
			oe.HasMax && !bytes.Equal(oe.Max, te.Max) {
			errs = append(errs, fmt.Errorf("%s: statistics %s, the values read back have %s", path, statString(oe), statString(te)))
		}
	}
	return errors.Join(errs...)
}

// statString shows what a comparison of statistics looks at, with min and max cut short.
func statString(e metadata.EncodedStatistics) string {
	cut := func(has bool, b []byte) string {
		if !has {
			return "none"
		}
		if len(b) > 16 {
			return fmt.Sprintf("%q... (%d bytes)", b[:16], len(b))
		}
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("{min %s max %s nulls %v/%d}", cut(e.HasMin, e.Min), cut(e.HasMax, e.Max), e.HasNullCount, e.NullCount)
}

// valueStats reads the values of column col of the first row group of f and returns their statistics, as the
// Parquet library computes them.
func valueStats(f *file.Reader, col int, mem memory.Allocator) (metadata.EncodedStatistics, error) {
	rg := f.RowGroup(0)
	cr, err := rg.Column(col)
	if err != nil {
		return metadata.EncodedStatistics{}, err
	}
	st := metadata.NewStatistics(cr.Descriptor(), mem)
	n := rg.MetaData().NumRows() * 64 // enough for every level of a chunk of the test records
	switch r := cr.(type) {
	case *file.ByteArrayColumnChunkReader:
		err = updateFromValues(r, n, st.(*metadata.ByteArrayStatistics).Update)
	case *file.Int64ColumnChunkReader:
		err = updateFromValues(r, n, st.(*metadata.Int64Statistics).Update)
	case *file.Float64ColumnChunkReader:
		err = updateFromValues(r, n, st.(*metadata.Float64Statistics).Update)
	case *file.BooleanColumnChunkReader:
		err = updateFromValues(r, n, st.(*metadata.BooleanStatistics).Update)
	default:
		err = fmt.Errorf("column reader %T", cr)
	}
	if err != nil {
		return metadata.EncodedStatistics{}, err
	}
	enc, err := st.Encode()
	if err != nil {
		return enc, err
	}
	enc.ApplyStatSizeLimits(int(parquet.DefaultMaxStatsSize))
	return enc, nil
}

// updateFromValues reads up to n levels of a column chunk and adds the values among them to statistics through
// update.
func updateFromValues[T any](r interface {
	ReadBatch(int64, []T, []int16, []int16) (int64, int, error)
}, n int64, update func([]T, int64)) error {
	v := make([]T, n)
	_, k, err := r.ReadBatch(n, v, make([]int16, n), make([]int16, n))
	if err != nil {
		return err
	}
	update(v[:k], 0)
	return nil
}

// concatRecords returns recs as one record.
func concatRecords(recs []arrow.Record, mem memory.Allocator) (arrow.Record, error) {
	cols := make([]arrow.Array, recs[0].NumCols())
	var rows int64
	for _, r := range recs {
		rows += r.NumRows()
	}
	for c := range cols {
		parts := make([]arrow.Array, len(recs))
		for i, r := range recs {
			parts[i] = r.Column(c)
		}
		a, err := array.Concatenate(parts, mem)
		if err != nil {
			return nil, err
		}
		defer a.Release()
		cols[c] = a
	}
	return array.NewRecord(recs[0].Schema(), cols, rows), nil
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

// TestListRunsMatchPqarrow writes lists whose sizes come in runs (empty lists, one-element lists, longer ones,
// nulls), nested two deep, with a distinct value per element, whole and in slices at odd boundaries (a slice's
// list arrays have an offset), and compares the files with pqarrow's.
func TestListRunsMatchPqarrow(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	item := arrow.StructOf(
		arrow.Field{Name: "code", Type: arrow.BinaryTypes.String, Nullable: true},
		arrow.Field{Name: "vals", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64), Nullable: true},
	)
	s := arrow.NewSchema([]arrow.Field{
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
		{Name: "items", Type: arrow.ListOf(item), Nullable: true},
	}, nil)
	const rows = 3000
	rb := array.NewRecordBuilder(mem, s)
	defer rb.Release()
	tb := rb.Field(0).(*array.ListBuilder)
	tag := tb.ValueBuilder().(*array.StringBuilder)
	ib := rb.Field(1).(*array.ListBuilder)
	sb := ib.ValueBuilder().(*array.StructBuilder)
	code := sb.FieldBuilder(0).(*array.StringBuilder)
	vb := sb.FieldBuilder(1).(*array.ListBuilder)
	val := vb.ValueBuilder().(*array.Int64Builder)
	// Sizes in runs: a run of each size, of a length that changes from run to run.
	size := func(i int) int {
		sizes := []int{1, 0, 1, 2, -1, 1, 3, 0, 1}
		return sizes[(i/(1+i%5+i/700))%len(sizes)]
	}
	for i := range rows {
		switch n := size(i); {
		case n < 0:
			tb.AppendNull()
		default:
			tb.Append(true)
			for k := range n {
				tag.Append(fmt.Sprintf("t%d.%d", i, k))
			}
		}
		switch n := size(i + 17); {
		case n < 0:
			ib.AppendNull()
		default:
			ib.Append(true)
			for k := range n {
				sb.Append(true)
				code.Append(fmt.Sprintf("c%d.%d", i, k))
				if m := size(i + k + 5); m < 0 {
					vb.AppendNull()
				} else {
					vb.Append(true)
					for j := range m {
						val.Append(int64(i*100 + k*10 + j))
					}
				}
			}
		}
	}
	rec := rb.NewRecord()
	defer rec.Release()
	if err := compareWithPqarrow([]arrow.Record{rec}, rows, mem); err != nil {
		t.Errorf("whole: %v", err)
	}
	var slices []arrow.Record
	for lo, step := int64(0), int64(1); lo < rows; lo, step = lo+step, step*3%997+1 {
		slices = append(slices, rec.NewSlice(lo, min(lo+step, rows)))
	}
	defer func() {
		for _, s := range slices {
			s.Release()
		}
	}()
	if err := compareWithPqarrow(slices, rows, mem); err != nil {
		t.Errorf("in %d slices, copied: %v", len(slices), err)
	}
	data, err := writeTable(slices, rows, mem, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := compareFileWithPqarrow(data, slices, mem); err != nil {
		t.Errorf("in %d slices as they are: %v", len(slices), err)
	}
}

// TestChunkPagesAndDictionaryFallback writes columns large enough for several data pages, a dictionary that
// outgrows its 1 MiB limit (so that the chunk falls back to PLAIN pages after it), strings longer than the 4 KiB
// statistics limit, and signed zeros, and compares values and statistics with pqarrow's.
func TestChunkPagesAndDictionaryFallback(t *testing.T) {
	mem := checkedAllocator(t)
	s := arrow.NewSchema([]arrow.Field{
		{Name: "s", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "n", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "f", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "long", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
	}, nil)
	const rows = 5000
	rb := array.NewRecordBuilder(mem, s)
	defer rb.Release()
	sb := rb.Field(0).(*array.StringBuilder)
	nb := rb.Field(1).(*array.Int64Builder)
	fb := rb.Field(2).(*array.Float64Builder)
	lb := rb.Field(3).(*array.StringBuilder)
	tb := rb.Field(4).(*array.ListBuilder)
	tag := tb.ValueBuilder().(*array.StringBuilder)
	pad := strings.Repeat("x", 600)
	for i := range rows {
		if i%7 == 3 {
			sb.AppendNull()
		} else {
			sb.Append(fmt.Sprintf("%05d%s", (i*7919)%rows, pad)) // distinct, out of order
		}
		nb.Append(int64(i*i) - 1e6)
		switch i % 5 {
		case 0:
			fb.Append(math.Copysign(0, -1))
		case 1:
			fb.Append(0)
		case 2:
			fb.AppendNull()
		default:
			fb.Append(float64(i) / 7)
		}
		if i%100 == 0 {
			lb.Append(strings.Repeat(string(rune('a'+i%26)), 5000))
		} else {
			lb.Append("short")
		}
		tb.Append(true)
		for k := range i % 4 {
			tag.Append(fmt.Sprint(k, pad))
		}
	}
	rec := rb.NewRecord()
	defer rec.Release()
	for _, rg := range []int{rows, 1700} {
		if err := compareWithPqarrow([]arrow.Record{rec}, rg, mem); err != nil {
			t.Errorf("row groups of %d: %v", rg, err)
		}
	}
	if err := compareStatsWithPqarrow([]arrow.Record{rec}, mem); err != nil {
		t.Error(err)
	}
	// Written in slices, one Write each: the fallback comes in the middle of a Write, and the statistics of PLAIN
	// values are carried from Write to Write.
	var slices []arrow.Record
	for lo := int64(0); lo < rows; lo += 1300 {
		slices = append(slices, rec.NewSlice(lo, min(lo+1300, rows)))
	}
	if err := compareStatsWithPqarrow(slices, mem); err != nil {
		t.Errorf("in slices: %v", err)
	}
	if err := compareWithPqarrow(slices, rows, mem); err != nil {
		t.Errorf("in slices: %v", err)
	}
	for _, s := range slices {
		s.Release()
	}

	// The chunk of s did fall back, after several dictionary-encoded pages.
	data, err := writeOurs([]arrow.Record{rec}, rows, mem)
	if err != nil {
		t.Fatal(err)
	}
	f, err := file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pr, err := f.RowGroup(0).GetColumnPageReader(0)
	if err != nil {
		t.Fatal(err)
	}
	var dictPages int
	pagesBy := map[parquet.Encoding]int{}
	for pr.Next() {
		pg := pr.Page()
		switch pg.Type() {
		case 2: // DICTIONARY_PAGE
			dictPages++
		case 0: // DATA_PAGE
			pagesBy[parquet.Encoding(pg.Encoding())]++
		}
	}
	if err := pr.Err(); err != nil {
		t.Fatal(err)
	}
	if dictPages != 1 || pagesBy[parquet.Encodings.RLEDict] < 1 || pagesBy[parquet.Encodings.Plain] < 2 {
		t.Errorf("column s: %d dictionary pages, data pages by encoding %v; want a dictionary, its pages, then several PLAIN ones",
			dictPages, pagesBy)
	}
}
