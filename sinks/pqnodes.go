package sinks

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/parquet"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"
	"github.com/apache/thrift/lib/go/thrift"
)

// The Parquet schema of a table is the one pqarrow derives from its Arrow schema (pqarrow.ToParquet), but fhirlake
// does not build the library's tree of it: the tree's nodes, column descriptors, paths and name maps took about 13
// MB for StructureDefinition alone, and building it twice per table (for the layout, and for the footer) took a
// fifth of the CPU of a two-core run over r4-examples. parquetNodes lists the same nodes, following pqarrow's rules
// for the Arrow types a Table writes; TestParquetNodesMatchPqarrow holds them to the library's, for every R4 type.

// pqNode is one node of a table's Parquet schema.
type pqNode struct {
	name      string
	rep       parquet.Repetition
	fields    int32 // a group's children; -1 for a leaf
	ptype     parquet.Type
	logical   pqschema.LogicalType
	converted pqschema.ConvertedType
	fieldID   int32
}

func (n *pqNode) leaf() bool { return n.fields < 0 }

// parquetNodes returns the nodes of the Parquet schema of s under props, in pre-order from the root, as
// pqarrow.ToParquet makes them with the default Arrow writer properties.
func parquetNodes(s *arrow.Schema, props *parquet.WriterProperties) ([]pqNode, error) {
	nodes := []pqNode{groupNode(props.RootName(), props.RootRepetition(), s.NumFields(), pqschema.NoLogicalType{})}
	for _, f := range s.Fields() {
		var err error
		if nodes, err = appendNodes(nodes, f.Name, f, props); err != nil {
			return nil, fmt.Errorf("parquet schema: %w", err)
		}
	}
	return nodes, nil
}

func groupNode(name string, rep parquet.Repetition, fields int, logical pqschema.LogicalType) pqNode {
	converted, _ := logical.ToConvertedType()
	return pqNode{name: name, rep: rep, fields: int32(fields), logical: logical, converted: converted, fieldID: -1}
}

// appendNodes appends the nodes of field f, named name (pqarrow.fieldToNode).
func appendNodes(nodes []pqNode, name string, f arrow.Field, props *parquet.WriterProperties) ([]pqNode, error) {
	rep := parquet.Repetitions.Required
	if f.Nullable {
		rep = parquet.Repetitions.Optional
	}
	var ptype parquet.Type
	var logical pqschema.LogicalType = pqschema.NoLogicalType{}
	switch t := f.Type.(type) {
	case *arrow.StructType:
		if t.NumFields() == 0 {
			return nil, fmt.Errorf("%s: a struct without fields", name)
		}
		nodes = append(nodes, groupNode(name, rep, t.NumFields(), pqschema.NoLogicalType{}))
		for _, c := range t.Fields() {
			var err error
			if nodes, err = appendNodes(nodes, c.Name, c, props); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		return nodes, nil
	case *arrow.ListType:
		// pqschema.ListOf: a group of the list's name holding a repeated group "list" of one element.
		nodes = append(nodes, groupNode(name, rep, 1, pqschema.ListLogicalType{}),
			groupNode("list", parquet.Repetitions.Repeated, 1, pqschema.NoLogicalType{}))
		nodes, err := appendNodes(nodes, "element", arrow.Field{Name: name, Type: t.Elem(), Nullable: true}, props)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return nodes, nil
	case *arrow.TimestampType:
		ptype, logical = parquet.Types.Int64, timestampLogical(t, props)
	default:
		switch t.ID() {
		case arrow.BOOL:
			ptype = parquet.Types.Boolean
		case arrow.INT64:
			ptype, logical = parquet.Types.Int64, pqschema.NewIntLogicalType(64, true)
		case arrow.FLOAT64:
			ptype = parquet.Types.Double
		case arrow.STRING:
			ptype, logical = parquet.Types.ByteArray, pqschema.StringLogicalType{}
		case arrow.BINARY:
			ptype = parquet.Types.ByteArray
		default:
			return nil, fmt.Errorf("%s: no parquet writer for arrow type %s", name, t)
		}
	}
	converted, _ := logical.ToConvertedType()
	return append(nodes, pqNode{name: name, rep: rep, fields: -1, ptype: ptype, logical: logical, converted: converted,
		fieldID: fieldIDOf(f.Metadata)}), nil
}

// timestampLogical is the logical type of a timestamp (pqarrow's getTimestampMeta, without coercion): its own
// unit, but seconds as milliseconds, and nanoseconds as microseconds in files of version 1.0 and 2.4.
func timestampLogical(t *arrow.TimestampType, props *parquet.WriterProperties) pqschema.LogicalType {
	unit := pqschema.TimeUnitMicros
	switch t.Unit {
	case arrow.Second, arrow.Millisecond:
		unit = pqschema.TimeUnitMillis
	case arrow.Nanosecond:
		if v := props.Version(); v != parquet.V1_0 && v != parquet.V2_4 {
			unit = pqschema.TimeUnitNanos
		}
	}
	return pqschema.NewTimestampLogicalTypeForce(t.TimeZone != "", unit)
}

// fieldIDOf is a leaf's field id, from its PARQUET:field_id metadata; -1 for none.
func fieldIDOf(m arrow.Metadata) int32 {
	i := m.FindKey("PARQUET:field_id")
	if i < 0 {
		return -1
	}
	id, err := strconv.ParseInt(m.Values()[i], 10, 32)
	if err != nil || id < 0 {
		return -1
	}
	return int32(id)
}

// leafColumnSet is where the leaves of a schema's nodes are, in column order, and the path of each (the names from
// the root's child down, pqschema.ColumnPath).
type leafColumnSet struct {
	at    []int32  // the index in the nodes of each leaf
	names []string // every leaf's path, one after the other
	ends  []int32  // where each leaf's path ends in names
}

// len returns the number of leaves.
func (c *leafColumnSet) len() int { return len(c.at) }

// path returns the path of leaf i.
func (c *leafColumnSet) path(i int) []string {
	start := int32(0)
	if i > 0 {
		start = c.ends[i-1]
	}
	return c.names[start:c.ends[i]:c.ends[i]]
}

// leafColumns returns the leaves of nodes.
func leafColumns(nodes []pqNode) leafColumnSet {
	type open struct{ left int32 } // children still to come
	var c leafColumnSet
	var stack []open
	var path []string
	for i := 1; i < len(nodes); i++ {
		n := &nodes[i]
		path = append(path, n.name)
		if n.leaf() {
			c.at = append(c.at, int32(i))
			c.names = append(c.names, path...)
			c.ends = append(c.ends, int32(len(c.names)))
			path = path[:len(path)-1]
			for len(stack) > 0 {
				top := &stack[len(stack)-1]
				if top.left--; top.left > 0 {
					break
				}
				stack = stack[:len(stack)-1]
				path = path[:len(path)-1]
			}
			continue
		}
		stack = append(stack, open{left: n.fields})
	}
	return c
}

// dotted joins a path as pqschema.ColumnPath.String does, for the writer properties' per-column settings.
func dotted(path []string) string { return strings.Join(path, ".") }

// writeSchemaElement writes n as a SchemaElement of parquet.thrift (pqschema's toThrift).
func (tw *thriftWriter) writeSchemaElement(n *pqNode) {
	tw.structBegin()
	if n.leaf() {
		tw.i32(1, int32(n.ptype))
	}
	tw.i32(3, int32(n.rep))
	tw.str(4, n.name)
	if !n.leaf() {
		tw.i32(5, n.fields)
	}
	if n.converted != pqschema.ConvertedTypes.None {
		tw.i32(6, int32(n.converted))
	}
	if n.fieldID >= 0 {
		tw.i32(9, n.fieldID)
	}
	if n.logical != nil && n.logical.IsSerialized() {
		tw.field(10, thrift.STRUCT)
		tw.logicalType(n.logical)
	}
	tw.structEnd()
}

// logicalType writes the LogicalType union of parquet.thrift for the logical types parquetNodes makes.
func (tw *thriftWriter) logicalType(l pqschema.LogicalType) {
	tw.structBegin()
	switch {
	case l.Equals(pqschema.StringLogicalType{}):
		tw.emptyStruct(1)
	case l.Equals(pqschema.ListLogicalType{}):
		tw.emptyStruct(3)
	default:
		switch l := l.(type) {
		case interface {
			IsAdjustedToUTC() bool
			TimeUnit() pqschema.TimeUnitType
		}:
			tw.field(8, thrift.STRUCT) // TimestampType
			tw.structBegin()
			tw.boolean(1, l.IsAdjustedToUTC())
			tw.field(2, thrift.STRUCT) // TimeUnit: MILLIS, MICROS or NANOS
			tw.structBegin()
			tw.emptyStruct(int16(l.TimeUnit()) + 1)
			tw.structEnd()
			tw.structEnd()
		case interface {
			BitWidth() int8
			IsSigned() bool
		}:
			tw.field(10, thrift.STRUCT) // IntType
			tw.structBegin()
			tw.i8(1, l.BitWidth())
			tw.boolean(2, l.IsSigned())
			tw.structEnd()
		default:
			tw.keep(fmt.Errorf("footer: no thrift form for logical type %s", l))
		}
	}
	tw.structEnd()
}
