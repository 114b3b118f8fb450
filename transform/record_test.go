package transform

import (
	"bytes"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// TestFlushRecord checks flushRecord against the record array.NewRecord makes of the same columns: contents,
// names, slices, a replaced column and JSON, and that its references release every buffer.
func TestFlushRecord(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	s := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "n", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
	}, nil)
	b := array.NewRecordBuilder(mem, s)
	defer b.Release()
	b.Field(0).(*array.StringBuilder).AppendValues([]string{"a", "b", "c"}, []bool{true, false, true})
	b.Field(1).(*array.Int64Builder).AppendValues([]int64{1, 2, 3}, nil)
	want := b.NewRecord()
	defer want.Release()

	got := newFlushRecord(s, want.Columns(), want.NumRows())
	got.Retain()
	got.Release() // one reference left
	if !array.RecordEqual(got, want) || got.NumCols() != 2 || got.ColumnName(1) != "n" || got.Schema() != s {
		t.Fatalf("flushRecord differs from array.NewRecord's: %v", got)
	}
	gs, ws := got.NewSlice(1, 3), want.NewSlice(1, 3)
	if !array.RecordEqual(gs, ws) {
		t.Error("slices differ")
	}
	gs.Release()
	ws.Release()
	set, err := got.SetColumn(1, want.Column(1))
	if err != nil || !array.RecordEqual(set, want) {
		t.Errorf("SetColumn: %v", err)
	}
	if set != nil {
		set.Release()
	}
	gj, err1 := got.MarshalJSON()
	wj, err2 := want.MarshalJSON()
	if err1 != nil || err2 != nil || !bytes.Equal(gj, wj) {
		t.Errorf("JSON %s (%v), want %s (%v)", gj, err1, wj, err2)
	}
	got.Release()
	defer func() {
		if recover() == nil {
			t.Error("a record released once too often does not panic")
		}
	}()
	got.Release()
}
