package sinks

import (
	"fmt"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/bitutil"
	"github.com/apache/arrow/go/v17/parquet"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"
)

// This file finds the Parquet leaf columns of an Arrow schema and walks Arrow record batches to the definition
// levels, repetition levels and values of one leaf, which chunk.go encodes.
//
// Why not pqarrow's writer: FHIR tables are wide and sparse (ExplanationOfBenefit has 2,641 leaf columns,
// Observation 1,068, and a row fills a few dozen). pqarrow builds the levels of every leaf by walking every row,
// absent subtrees included, and keeps a column writer (encoders, dictionary, page buffers) open for every leaf of
// every open row group; that was most of a run's CPU and memory. Here the levels are computed over runs: a
// subtree that is null over a range of rows costs one run whatever its width, and a leaf that has no value in a
// row group keeps no encoder at all (chunk.go). The Parquet schema is pqarrow's own Arrow-to-Parquet schema.

// stepKind is what an Arrow array on the way to a leaf is.
type stepKind uint8

const (
	stepStruct stepKind = iota
	stepList
	stepLeaf
)

// step is one array on the path from a top-level column to a leaf: 12 bytes, of which a layout keeps one per
// level of every leaf (StructureDefinition's 10,181 leaves are 8 levels deep on average).
type step struct {
	kind     stepKind
	optional bool  // the Parquet node of this array is OPTIONAL: present adds one definition level
	rep      int16 // stepList: the repetition level of this list's elements after the first
	field    int32 // stepStruct: the child field the path goes on through
	node     int32 // the schema node of this array, numbered in the table: leaves through the same node share it
}

// leafPath is how to reach one Parquet leaf column from a record.
type leafPath struct {
	steps  []step
	typ    arrow.Type // of the leaf array
	ptype  parquet.Type
	column int32 // top-level column of the record
	maxDef int16
	maxRep int16

	// Set by newTableLayout.
	node     leafNode
	maxStats int32 // longest min or max kept in the statistics (the writer properties, for the leaf's path)
	dict     bool  // values are dictionary-encoded (the writer properties, for the leaf's path)
}

// leafNode is what the descriptor of a leaf's Parquet node alone is made of (leafPath.descr), for its type and
// statistics. A layout keeps this rather than the descriptor, or the leaf's path: a chunk makes the descriptor when
// it first needs statistics, and most leaves of a wide FHIR table never get a value (r4-examples' 138 tables held
// about 40 MB of descriptors and paths). The footer takes the paths from the schema's nodes (parquetNodes).
type leafNode struct {
	name    string
	rep     parquet.Repetition
	logical pqschema.LogicalType
	order   parquet.ColumnOrder
	typeLen int32
	fieldID int32
	sort    pqschema.SortOrder
}

// descr returns a descriptor of l's Parquet node alone, outside the schema's tree. newTableLayout made one of the
// same node, so it does not fail.
func (l *leafPath) descr() *pqschema.Column {
	n, err := l.node.primitive(l.ptype)
	if err != nil {
		panic(fmt.Sprintf("leaf %s: %v", l.node.name, err)) // newTableLayout checked the node
	}
	return pqschema.NewColumn(n, l.maxDef, l.maxRep)
}

func (n *leafNode) primitive(ptype parquet.Type) (*pqschema.PrimitiveNode, error) {
	p, err := pqschema.NewPrimitiveNodeLogical(n.name, n.rep, n.logical, ptype, int(n.typeLen), n.fieldID)
	if err != nil {
		return nil, err
	}
	p.ColumnOrder = n.order
	return p, nil
}

// leafPaths returns the leaves of s in Parquet column order, walking nodes, the Parquet schema of s
// (parquetNodes), alongside.
func leafPaths(s *arrow.Schema, nodes []pqNode) ([]leafPath, error) {
	if len(nodes) == 0 || int(nodes[0].fields) != s.NumFields() {
		return nil, fmt.Errorf("parquet schema does not have the %d top-level fields of the arrow schema", s.NumFields())
	}
	w := leafWalk{nodes: nodes, at: 1}
	leaves := 0
	for i := range nodes {
		if nodes[i].leaf() {
			leaves++
		}
	}
	out := make([]leafPath, 0, leaves)
	for c, f := range s.Fields() {
		var err error
		out, err = w.appendLeaves(out, c, f.Type, nil, 0)
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", f.Name, err)
		}
	}
	if w.at != len(nodes) {
		return nil, fmt.Errorf("parquet schema has %d nodes, the arrow schema %d", len(nodes), w.at)
	}
	return out, nil
}

// leafWalk walks the Parquet nodes of a schema in pre-order, alongside its Arrow types.
type leafWalk struct {
	nodes []pqNode
	at    int   // the next node
	count int32 // arrays met: step.node
}

// next returns the next node, and fails past the last.
func (w *leafWalk) next() (*pqNode, error) {
	if w.at >= len(w.nodes) {
		return nil, fmt.Errorf("parquet schema has fewer nodes than the arrow schema")
	}
	w.at++
	return &w.nodes[w.at-1], nil
}

func (w *leafWalk) appendLeaves(out []leafPath, column int, t arrow.DataType, path []step, rep int16) ([]leafPath, error) {
	n, err := w.next()
	if err != nil {
		return nil, err
	}
	node := w.count
	w.count++
	var optional bool
	switch n.rep {
	case parquet.Repetitions.Optional:
		optional = true
	case parquet.Repetitions.Required:
	default:
		return nil, fmt.Errorf("%s: unexpected repetition %s", n.name, n.rep)
	}
	switch t := t.(type) {
	case *arrow.StructType:
		if n.leaf() || int(n.fields) != t.NumFields() {
			return nil, fmt.Errorf("%s: struct does not match its parquet group", n.name)
		}
		for i, f := range t.Fields() {
			p := append(path[:len(path):len(path)], step{kind: stepStruct, optional: optional, field: int32(i), node: node})
			var err error
			if out, err = w.appendLeaves(out, column, f.Type, p, rep); err != nil {
				return nil, fmt.Errorf("%s: %w", f.Name, err)
			}
		}
		return out, nil
	case *arrow.ListType:
		if n.leaf() || n.fields != 1 {
			return nil, fmt.Errorf("%s: list does not match its parquet group", n.name)
		}
		r, err := w.next()
		if err != nil {
			return nil, err
		}
		if r.leaf() || r.rep != parquet.Repetitions.Repeated || r.fields != 1 {
			return nil, fmt.Errorf("%s: list without a repeated group of one element", n.name)
		}
		p := append(path[:len(path):len(path)], step{kind: stepList, optional: optional, rep: rep + 1, node: node})
		return w.appendLeaves(out, column, t.Elem(), p, rep+1)
	}
	if !n.leaf() {
		return nil, fmt.Errorf("%s: a parquet group for arrow type %s", n.name, t)
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
		return nil, fmt.Errorf("%s: no parquet writer for arrow type %s", n.name, t)
	}
	if ptype != n.ptype {
		return nil, fmt.Errorf("%s: physical type %s, the parquet schema's %s", n.name, ptype, n.ptype)
	}
	p := append(path[:len(path):len(path)], step{kind: stepLeaf, optional: optional, node: node})
	var def int16
	for _, s := range p {
		if s.optional {
			def++
		}
		if s.kind == stepList {
			def++ // the repeated group: at least one element
		}
	}
	return append(out, leafPath{column: int32(column), steps: p, maxDef: def, maxRep: rep, typ: t.ID(), ptype: ptype}), nil
}

// walk appends the entries of elements [lo, hi) of arr, the array at step s, whose ancestors are all present at
// definition level d. The first element starts at repetition level r0, the others at r.
func (c *chunkWriter) walk(s int, arr arrow.Array, lo, hi int, d, r0, r int16) {
	if lo >= hi {
		return
	}
	st := &c.lc.leaf.steps[s]
	if !st.optional {
		c.present(s, arr, lo, hi, d, r0, r)
		return
	}
	nulls := arr.NullN()
	switch {
	case nulls == 0:
		c.present(s, arr, lo, hi, d+1, r0, r)
		return
	case nulls == arr.Len():
		c.emit(hi-lo, d, r0, r)
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
			c.present(s, arr, i, j, d+1, rr, r)
		} else {
			c.emit(j-i, d, rr, r)
		}
		i = j
	}
}

// present is walk for elements that are all present, at definition level d.
func (c *chunkWriter) present(s int, arr arrow.Array, lo, hi int, d, r0, r int16) {
	st := &c.lc.leaf.steps[s]
	switch st.kind {
	case stepStruct:
		c.walk(s+1, arr.(*array.Struct).Field(int(st.field)), lo, hi, d, r0, r)
	case stepList:
		l := arr.(*array.List)
		elems := l.ListValues()
		offs := l.Offsets()[l.Data().Offset():] // Offsets is the whole buffer, whatever the array's offset
		for i := lo; i < hi; {
			rr := r
			if i == lo {
				rr = r0
			}
			start, end := offs[i], offs[i+1]
			// A run of empty lists, or of lists of one element, is written in one go: each of its entries starts
			// at repetition level r (the first at rr), so the entries of a run of one-element lists are the
			// elements themselves, one after another. FHIR's lists mostly hold one element (a coding, an
			// identifier, a name), and a walk per list was most of the cost of a deep column.
			j := i + 1
			for j < hi && offs[j+1]-offs[j] == end-start && end-start <= 1 {
				j++
			}
			switch {
			case start == end:
				c.emit(j-i, d, rr, r) // present and empty
			case end-start == 1:
				c.walk(s+1, elems, int(start), int(start)+j-i, d+1, rr, r)
			default:
				c.walk(s+1, elems, int(start), int(end), d+1, rr, st.rep)
			}
			i = j
		}
	case stepLeaf:
		c.emit(hi-lo, d, r0, r)
		c.putValues(arr, lo, hi)
	}
}
