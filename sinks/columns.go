package sinks

import (
	"fmt"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/bitutil"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"
)

// This file turns Arrow record batches into the definition levels, repetition levels and values of each Parquet
// leaf column, and hands them to the Parquet library's column chunk writers.
//
// Why not pqarrow's writer: FHIR tables are wide and sparse (ExplanationOfBenefit has 2,641 leaf columns,
// Observation 1,068, and a row fills a few dozen). pqarrow builds the levels of every leaf by walking every row,
// absent subtrees included, and keeps a column writer (encoders, dictionary, page buffers) open for every leaf of
// every open row group; that was most of a run's CPU and memory. Here the levels are computed over runs: a
// subtree that is null over a range of rows costs one run whatever its width, and the leaves of a row group are
// written one after the other, so one column writer is open at a time. The Parquet file (schema, pages,
// statistics, dictionaries, footer) is still the Parquet library's, from pqarrow's own Arrow-to-Parquet schema.

// stepKind is what an Arrow array on the way to a leaf is.
type stepKind uint8

const (
	stepStruct stepKind = iota
	stepList
	stepLeaf
)

// step is one array on the path from a top-level column to a leaf.
type step struct {
	kind     stepKind
	optional bool  // the Parquet node of this array is OPTIONAL: present adds one definition level
	field    int   // stepStruct: the child field the path goes on through
	rep      int16 // stepList: the repetition level of this list's elements after the first
}

// leafPath is how to reach one Parquet leaf column from a record.
type leafPath struct {
	column int // top-level column of the record
	steps  []step
	maxDef int16
	maxRep int16
	typ    arrow.Type // of the leaf array
	ptype  parquet.Type
}

// leafPaths returns the leaves of s in Parquet column order, checked against the Parquet schema pqarrow derives
// from s.
func leafPaths(s *arrow.Schema, ps *pqschema.Schema) ([]leafPath, error) {
	var out []leafPath
	root := ps.Root()
	if root.NumFields() != s.NumFields() {
		return nil, fmt.Errorf("parquet schema has %d top-level fields, arrow schema %d", root.NumFields(), s.NumFields())
	}
	for c, f := range s.Fields() {
		var err error
		out, err = appendLeaves(out, c, f.Type, root.Field(c), nil, 0)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", f.Name, err)
		}
	}
	if len(out) != ps.NumColumns() {
		return nil, fmt.Errorf("%d leaves, parquet schema has %d columns", len(out), ps.NumColumns())
	}
	for i := range out {
		d := ps.Column(i)
		if d.MaxDefinitionLevel() != out[i].maxDef || d.MaxRepetitionLevel() != out[i].maxRep || d.PhysicalType() != out[i].ptype {
			return nil, fmt.Errorf("leaf %s: levels %d/%d %s, parquet schema says %d/%d %s", d.Path(),
				out[i].maxDef, out[i].maxRep, out[i].ptype, d.MaxDefinitionLevel(), d.MaxRepetitionLevel(), d.PhysicalType())
		}
	}
	return out, nil
}

func appendLeaves(out []leafPath, column int, t arrow.DataType, n pqschema.Node, path []step, rep int16) ([]leafPath, error) {
	var optional bool
	switch n.RepetitionType() {
	case parquet.Repetitions.Optional:
		optional = true
	case parquet.Repetitions.Required:
	default:
		return nil, fmt.Errorf("%s: unexpected repetition %s", n.Name(), n.RepetitionType())
	}
	switch t := t.(type) {
	case *arrow.StructType:
		g, ok := n.(*pqschema.GroupNode)
		if !ok || g.NumFields() != t.NumFields() {
			return nil, fmt.Errorf("%s: struct does not match its parquet group", n.Name())
		}
		for i, f := range t.Fields() {
			p := append(path[:len(path):len(path)], step{kind: stepStruct, optional: optional, field: i})
			var err error
			if out, err = appendLeaves(out, column, f.Type, g.Field(i), p, rep); err != nil {
				return nil, fmt.Errorf("%s: %w", f.Name, err)
			}
		}
		return out, nil
	case *arrow.ListType:
		g, ok := n.(*pqschema.GroupNode)
		if !ok || g.NumFields() != 1 {
			return nil, fmt.Errorf("%s: list does not match its parquet group", n.Name())
		}
		r, ok := g.Field(0).(*pqschema.GroupNode)
		if !ok || r.RepetitionType() != parquet.Repetitions.Repeated || r.NumFields() != 1 {
			return nil, fmt.Errorf("%s: list without a repeated group of one element", n.Name())
		}
		p := append(path[:len(path):len(path)], step{kind: stepList, optional: optional, rep: rep + 1})
		return appendLeaves(out, column, t.Elem(), r.Field(0), p, rep+1)
	}
	var ptype parquet.Type
	switch t.ID() {
	case arrow.STRING, arrow.BINARY:
		ptype = parquet.Types.ByteArray
	case arrow.BOOL:
		ptype = parquet.Types.Boolean
	case arrow.INT64, arrow.TIMESTAMP:
		ptype = parquet.Types.Int64
	case arrow.FLOAT64:
		ptype = parquet.Types.Double
	default:
		return nil, fmt.Errorf("%s: no parquet writer for arrow type %s", n.Name(), t)
	}
	p := append(path[:len(path):len(path)], step{kind: stepLeaf, optional: optional})
	var def int16
	for _, s := range p {
		if s.optional {
			def++
		}
		if s.kind == stepList {
			def++ // the repeated group: at least one element
		}
	}
	return append(out, leafPath{column: column, steps: p, maxDef: def, maxRep: rep, typ: t.ID(), ptype: ptype}), nil
}

// leafBuf collects the levels and values of one leaf over the records of a row group. It is reused from leaf to
// leaf.
type leafBuf struct {
	path   *leafPath
	def    []int16
	rep    []int16
	bytes  []parquet.ByteArray
	bools  []bool
	int64s []int64
	floats []float64
}

func (b *leafBuf) reset(p *leafPath) {
	b.path = p
	b.def, b.rep = b.def[:0], b.rep[:0]
	clear(b.bytes) // drop references to the records' buffers
	b.bytes = b.bytes[:0]
	b.bools, b.int64s, b.floats = b.bools[:0], b.int64s[:0], b.floats[:0]
}

// add appends the levels and values of rows [lo, hi) of rec.
func (b *leafBuf) add(rec arrow.Record, lo, hi int) {
	b.walk(0, rec.Column(b.path.column), lo, hi, 0, 0, 0)
}

// emit appends n entries at definition level d: the first at repetition level r0, the others at r.
func (b *leafBuf) emit(n int, d, r0, r int16) {
	if n <= 0 {
		return
	}
	b.def = appendRepeat(b.def, d, n)
	if b.path.maxRep > 0 {
		b.rep = append(b.rep, r0)
		b.rep = appendRepeat(b.rep, r, n-1)
	}
}

func appendRepeat(s []int16, v int16, n int) []int16 {
	s = append(s, make([]int16, n)...) // the compiler turns this into one growth and a clear
	if v != 0 {
		t := s[len(s)-n:]
		for i := range t {
			t[i] = v
		}
	}
	return s
}

// walk appends the entries of elements [lo, hi) of arr, the array at step s, whose ancestors are all present at
// definition level d. The first element starts at repetition level r0, the others at r.
func (b *leafBuf) walk(s int, arr arrow.Array, lo, hi int, d, r0, r int16) {
	if lo >= hi {
		return
	}
	st := &b.path.steps[s]
	if !st.optional {
		b.present(s, arr, lo, hi, d, r0, r)
		return
	}
	nulls := arr.NullN()
	switch {
	case nulls == 0:
		b.present(s, arr, lo, hi, d+1, r0, r)
		return
	case nulls == arr.Len():
		b.emit(hi-lo, d, r0, r)
		return
	}
	bits := arr.NullBitmapBytes()
	off := arr.Data().Offset()
	for i := lo; i < hi; {
		valid := bitutil.BitIsSet(bits, off+i)
		j := i + 1
		for j < hi && bitutil.BitIsSet(bits, off+j) == valid {
			j++
		}
		rr := r
		if i == lo {
			rr = r0
		}
		if valid {
			b.present(s, arr, i, j, d+1, rr, r)
		} else {
			b.emit(j-i, d, rr, r)
		}
		i = j
	}
}

// present is walk for elements that are all present, at definition level d.
func (b *leafBuf) present(s int, arr arrow.Array, lo, hi int, d, r0, r int16) {
	st := &b.path.steps[s]
	switch st.kind {
	case stepStruct:
		b.walk(s+1, arr.(*array.Struct).Field(st.field), lo, hi, d, r0, r)
	case stepList:
		l := arr.(*array.List)
		elems := l.ListValues()
		for i := lo; i < hi; i++ {
			rr := r
			if i == lo {
				rr = r0
			}
			start, end := l.ValueOffsets(i)
			if start == end {
				b.emit(1, d, rr, r) // present and empty
				continue
			}
			b.walk(s+1, elems, int(start), int(end), d+1, rr, st.rep)
		}
	case stepLeaf:
		b.emit(hi-lo, d, r0, r)
		b.values(arr, lo, hi)
	}
}

// values appends the values of elements [lo, hi) of a leaf array, all present.
func (b *leafBuf) values(arr arrow.Array, lo, hi int) {
	switch a := arr.(type) {
	case *array.String:
		data, base := a.ValueBytes(), a.ValueOffset(0) // data starts at the array's first value
		for i := lo; i < hi; i++ {
			start := a.ValueOffset(i) - base
			b.bytes = append(b.bytes, data[start:start+a.ValueLen(i):start+a.ValueLen(i)])
		}
	case *array.Binary:
		for i := lo; i < hi; i++ {
			b.bytes = append(b.bytes, a.Value(i))
		}
	case *array.Boolean:
		for i := lo; i < hi; i++ {
			b.bools = append(b.bools, a.Value(i))
		}
	case *array.Int64:
		b.int64s = append(b.int64s, a.Int64Values()[lo:hi]...)
	case *array.Timestamp:
		for _, v := range a.TimestampValues()[lo:hi] {
			b.int64s = append(b.int64s, int64(v))
		}
	case *array.Float64:
		b.floats = append(b.floats, a.Float64Values()[lo:hi]...)
	}
}

// write hands what was collected to the leaf's column chunk writer.
func (b *leafBuf) write(cw file.ColumnChunkWriter) error {
	def := b.def
	if b.path.maxDef == 0 {
		def = nil
	}
	var rep []int16
	if b.path.maxRep > 0 {
		rep = b.rep
	}
	var err error
	switch w := cw.(type) {
	case *file.ByteArrayColumnChunkWriter:
		_, err = w.WriteBatch(b.bytes, def, rep)
	case *file.BooleanColumnChunkWriter:
		_, err = w.WriteBatch(b.bools, def, rep)
	case *file.Int64ColumnChunkWriter:
		_, err = w.WriteBatch(b.int64s, def, rep)
	case *file.Float64ColumnChunkWriter:
		_, err = w.WriteBatch(b.floats, def, rep)
	default:
		err = fmt.Errorf("unexpected column writer %T", cw)
	}
	return err
}
