package transform

import (
	"sync/atomic"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
)

// flushRecord is the arrow.Record a Worker flushes: what array.NewRecord returns, without the check NewRecord
// makes of each column's type against the schema. That check walks both type trees in full (arrow.TypeEqual),
// thousands of nodes for a wide FHIR table, for every record flushed: 2.4% of a two-core run, whose decoders flush
// more records than one does. The columns here are built from the schema's own types (newCol, zeros.nulls), and
// the transform tests check every column's type against its field.
type flushRecord struct {
	refs   atomic.Int64
	schema *arrow.Schema
	rows   int64
	cols   []arrow.Array
}

// newFlushRecord returns a record of cols, which it retains, with one reference for the caller.
func newFlushRecord(s *arrow.Schema, cols []arrow.Array, rows int64) *flushRecord {
	r := &flushRecord{schema: s, rows: rows, cols: cols}
	for _, c := range cols {
		c.Retain()
	}
	r.refs.Store(1)
	return r
}

func (r *flushRecord) Retain() { r.refs.Add(1) }

func (r *flushRecord) Release() {
	switch n := r.refs.Add(-1); {
	case n == 0:
		for _, c := range r.cols {
			c.Release()
		}
		r.cols = nil
	case n < 0:
		panic("transform: record released too many times")
	}
}

func (r *flushRecord) Schema() *arrow.Schema    { return r.schema }
func (r *flushRecord) NumRows() int64           { return r.rows }
func (r *flushRecord) NumCols() int64           { return int64(len(r.cols)) }
func (r *flushRecord) Columns() []arrow.Array   { return r.cols }
func (r *flushRecord) Column(i int) arrow.Array { return r.cols[i] }
func (r *flushRecord) ColumnName(i int) string  { return r.schema.Field(i).Name }

// SetColumn, NewSlice and MarshalJSON are Arrow's own, on a checked record of the same columns.
func (r *flushRecord) SetColumn(i int, col arrow.Array) (arrow.Record, error) {
	rec := r.checked()
	defer rec.Release()
	return rec.SetColumn(i, col)
}

func (r *flushRecord) NewSlice(i, j int64) arrow.Record {
	rec := r.checked()
	defer rec.Release()
	return rec.NewSlice(i, j)
}

func (r *flushRecord) MarshalJSON() ([]byte, error) {
	rec := r.checked()
	defer rec.Release()
	return rec.MarshalJSON()
}

// checked returns Arrow's own record of r's columns, with the type check; the caller releases it.
func (r *flushRecord) checked() arrow.Record { return array.NewRecord(r.schema, r.cols, r.rows) }

var _ arrow.Record = (*flushRecord)(nil)
