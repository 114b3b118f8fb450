package sinks

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"gocloud.dev/blob/memblob"
)

// TestDictionaryRuns: a page being built keeps a run of one dictionary index as two entries whatever its length,
// and each index of values that change as one; the file reads back as pqarrow writes it.
func TestDictionaryRuns(t *testing.T) {
	mem := checkedAllocator(t)
	s := arrow.NewSchema([]arrow.Field{
		{Name: "same", Type: arrow.BinaryTypes.String, Nullable: true},   // one value throughout
		{Name: "runs", Type: arrow.PrimitiveTypes.Int64, Nullable: true}, // runs of 1 to 9, then nulls
		{Name: "flip", Type: arrow.BinaryTypes.String, Nullable: true},   // two values in turn: no run
	}, nil)
	const rows = 12000
	rb := array.NewRecordBuilder(mem, s)
	defer rb.Release()
	runs := 0
	for i := range rows {
		rb.Field(0).(*array.StringBuilder).Append("final")
		if r := i / 45 % 10; r == 9 {
			rb.Field(1).AppendNull()
		} else {
			rb.Field(1).(*array.Int64Builder).Append(int64(i / (r + 1) % 7))
		}
		rb.Field(2).(*array.StringBuilder).Append([]string{"a", "b"}[i%2])
	}
	rec := rb.NewRecord()
	defer rec.Release()

	b := memblob.OpenBucket(nil)
	defer b.Close()
	tbl := NewTable(b, "out", "Basic", s, ParquetOptions{Allocator: mem})
	defer tbl.Abort()
	if err := tbl.Write(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	tbl.mu.Lock()
	cw := tbl.idle[0].cw
	same, flip := cw.leaves[0].lc, cw.leaves[2].lc
	if !same.useDict || len(same.idx) != 2 || same.idx[0] != runFlag || same.idx[1] != rows {
		t.Errorf("a column of one value keeps the dictionary indices %v, want one run of %d", same.idx, rows)
	}
	// flip's page spills at 64 KiB of indices: what is left of it is one entry per value.
	if n := flip.pageValues; len(flip.idx) != n || n == 0 {
		t.Errorf("a column of two values in turn keeps %d dictionary index entries for %d values", len(flip.idx), n)
	}
	for _, id := range cw.leaves[1].lc.idx {
		if id&runFlag != 0 {
			runs++
		}
	}
	tbl.mu.Unlock()
	if runs == 0 {
		t.Error("a column of runs kept none")
	}
	if err := compareWithPqarrow([]arrow.Record{rec}, rows, mem); err != nil {
		t.Error(err)
	}
}

// TestChunkStateOnFirstValue: a leaf gets its chunk state when it first gets a value in the part, and keeps it;
// the leaves without a value are written from their levels alone. The file reads back as pqarrow writes it.
func TestChunkStateOnFirstValue(t *testing.T) {
	mem := checkedAllocator(t)
	s := edgeSchema()
	// first: only id and f have values; then "one" gets a value in its field s, in a later row group.
	build := func(start, n int, withOne bool) arrow.Record {
		rb := array.NewRecordBuilder(mem, s)
		defer rb.Release()
		for i := start; i < start+n; i++ {
			rb.Field(0).(*array.StringBuilder).Append(fmt.Sprintf("id-%d", i))
			rb.Field(1).AppendNull()
			rb.Field(2).(*array.Float64Builder).Append(float64(i))
			for f := 3; f <= 6; f++ {
				rb.Field(f).AppendNull()
			}
			one := rb.Field(7).(*array.StructBuilder)
			if !withOne || i%3 != 0 {
				one.AppendNull()
				continue
			}
			one.Append(true)
			one.FieldBuilder(0).(*array.StringBuilder).Append("x")
			one.FieldBuilder(1).(*array.Int64Builder).Append(int64(i))
			one.FieldBuilder(2).AppendNull()
		}
		return rb.NewRecord()
	}
	recs := []arrow.Record{build(0, 100, false), build(100, 100, true)}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()

	b := memblob.OpenBucket(nil)
	defer b.Close()
	tbl := NewTable(b, "out", "Basic", s, ParquetOptions{RowGroupRows: 100, Allocator: mem})
	defer tbl.Abort()
	made := func() []string {
		tbl.mu.Lock()
		defer tbl.mu.Unlock()
		var got []string
		cw := tbl.idle[0].cw
		for i, sl := range cw.leaves {
			if sl.lc != nil {
				got = append(got, cw.layout.columnPath(i))
			}
		}
		return got
	}
	ctx := context.Background()
	for i, want := range [][]string{{"id", "f"}, {"id", "f", "one.s", "one.n"}} {
		if err := tbl.Write(ctx, recs[i]); err != nil {
			t.Fatal(err)
		}
		if got := made(); !slices.Equal(got, want) {
			t.Errorf("after record %d the leaves with chunk state are %v, want %v", i, got, want)
		}
	}
	if err := compareWithPqarrow(recs, 100, mem); err != nil {
		t.Error(err)
	}
}
