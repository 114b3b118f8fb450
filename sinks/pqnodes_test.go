package sinks

import (
	"bytes"
	"slices"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"

	"github.com/fhirlake/fhirlake/schema"
)

// TestParquetNodesMatchPqarrow: parquetNodes lists the nodes of the Parquet schema that pqarrow derives, for the
// schema of every R4 type and for edge cases of the Arrow types a Table writes (timestamps of every unit, with and
// without a zone, field ids, required fields, lists of lists and of structs), under V2, V2.4 and V1 properties:
// the same SchemaElements to the byte, and the same leaf columns (paths, physical and logical types).
func TestParquetNodesMatchPqarrow(t *testing.T) {
	reg, err := schema.New(schema.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var schemas []*arrow.Schema
	for _, typ := range reg.Types() {
		res, err := reg.Build(typ)
		if err != nil {
			t.Fatal(err)
		}
		schemas = append(schemas, res.Schema)
	}
	id := func(v string) arrow.Metadata { return arrow.NewMetadata([]string{"PARQUET:field_id"}, []string{v}) }
	var ts []arrow.Field
	for _, u := range []arrow.TimeUnit{arrow.Second, arrow.Millisecond, arrow.Microsecond, arrow.Nanosecond} {
		for _, zone := range []string{"", "UTC"} {
			ts = append(ts, arrow.Field{Name: "t" + u.String() + zone, Type: &arrow.TimestampType{Unit: u, TimeZone: zone}, Nullable: zone == ""})
		}
	}
	elem := arrow.StructOf(arrow.Field{Name: "a", Type: arrow.BinaryTypes.String, Nullable: true, Metadata: id("7")},
		arrow.Field{Name: "b", Type: arrow.ListOf(arrow.ListOf(arrow.PrimitiveTypes.Float64))})
	schemas = append(schemas, arrow.NewSchema(append(ts,
		arrow.Field{Name: "id", Type: arrow.PrimitiveTypes.Int64, Metadata: id("3")},
		arrow.Field{Name: "bad", Type: arrow.FixedWidthTypes.Boolean, Nullable: true, Metadata: id("-2")},
		arrow.Field{Name: "word", Type: arrow.BinaryTypes.Binary, Nullable: true, Metadata: id("x")},
		arrow.Field{Name: "s", Type: elem, Nullable: true, Metadata: id("9")},
		arrow.Field{Name: "l", Type: arrow.ListOf(elem), Nullable: true, Metadata: id("11")},
		arrow.Field{Name: "r", Type: arrow.ListOfNonNullable(arrow.BinaryTypes.String)},
	), nil))

	for _, props := range []*parquet.WriterProperties{
		parquet.NewWriterProperties(),
		parquet.NewWriterProperties(parquet.WithVersion(parquet.V2_4)),
		parquet.NewWriterProperties(parquet.WithVersion(parquet.V1_0), parquet.WithRootName("root"),
			parquet.WithRootRepetition(parquet.Repetitions.Required)),
	} {
		for _, s := range schemas {
			name := s.Field(0).Name
			ps, err := pqarrow.ToParquet(s, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
			if err != nil {
				t.Fatal(err)
			}
			nodes, err := parquetNodes(s, props)
			if err != nil {
				t.Fatal(err)
			}
			var want, got bytes.Buffer
			tw := newThriftWriter(&want)
			for _, e := range pqschema.ToThrift(ps.Root()) {
				tw.keep(e.Write(tw.ctx, tw.p))
			}
			if err := tw.flush(); err != nil {
				t.Fatal(err)
			}
			tw = newThriftWriter(&got)
			for i := range nodes {
				tw.writeSchemaElement(&nodes[i])
			}
			if err := tw.flush(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("schema of %s..., version %v: %d nodes make %d bytes of SchemaElements, the library's %d",
					name, props.Version(), len(nodes), got.Len(), want.Len())
			}
			lc := leafColumns(nodes)
			if lc.len() != ps.NumColumns() {
				t.Fatalf("schema of %s...: %d leaves, the library %d", name, lc.len(), ps.NumColumns())
			}
			for i, at := range lc.at {
				c, n := ps.Column(i), &nodes[at]
				path := lc.path(i)
				if !slices.Equal(path, c.ColumnPath()) || n.ptype != c.PhysicalType() || !n.logical.Equals(c.LogicalType()) ||
					n.converted != c.ConvertedType() || n.rep != c.SchemaNode().RepetitionType() || n.fieldID != c.SchemaNode().FieldID() {
					t.Fatalf("schema of %s...: leaf %d is %v %s %s, the library's %s %s %s", name, i, path, n.ptype, n.logical,
						c.Path(), c.PhysicalType(), c.LogicalType())
				}
			}
		}
	}
}

// parquetSchema returns the Parquet schema that pqarrow derives from the layout's Arrow schema with the layout's
// properties: the library's tree, which parquetNodes lists without building.
func (l *tableLayout) parquetSchema() (*pqschema.Schema, error) {
	return pqarrow.ToParquet(l.arrow, l.props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
}
