package transform

import (
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// TestZerosShareNulls checks that a flush makes the all-null array of a type and length once and hands out
// references to it, scalar or nested, that every array is all null, and that nothing is left held once the arrays
// and the flush's zeros are released.
func TestZerosShareNulls(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	z := &zeros{mem: mem}
	st := arrow.StructOf(arrow.Field{Name: "a", Type: arrow.BinaryTypes.String, Nullable: true})
	var got []arrow.ArrayData
	get := func(typ arrow.DataType, n int) arrow.ArrayData {
		d := z.nulls(typ, n)
		got = append(got, d)
		return d
	}
	s1, s2 := get(arrow.BinaryTypes.String, 5), get(arrow.BinaryTypes.String, 5)
	if s1 != s2 {
		t.Error("two all-null strings of length 5 in one flush are made twice")
	}
	if get(arrow.BinaryTypes.String, 6) == s1 {
		t.Error("an all-null string of length 6 is the one of length 5")
	}
	if get(arrow.PrimitiveTypes.Int64, 5) == s1 {
		t.Error("an all-null int64 is the all-null string of the same length")
	}
	if get(st, 5) != get(st, 5) {
		t.Error("two all-null structs of one type and length in one flush are made twice")
	}
	if get(st, 4) == get(st, 5) {
		t.Error("an all-null struct of length 4 is the one of length 5")
	}
	lt := arrow.ListOf(arrow.FixedWidthTypes.Boolean)
	if get(lt, 3) != get(lt, 3) {
		t.Error("two all-null lists of one type and length in one flush are made twice")
	}
	for _, d := range got {
		a := array.MakeFromData(d)
		if a.NullN() != a.Len() {
			t.Errorf("%s of length %d has %d nulls", a.DataType(), a.Len(), a.NullN())
		}
		for i := range a.Len() {
			if !a.IsNull(i) {
				t.Errorf("%s entry %d is not null", a.DataType(), i)
			}
		}
		a.Release()
	}
	for _, d := range got {
		d.Release()
	}
	z.release()
}
