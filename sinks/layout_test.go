package sinks

import (
	"testing"

	"github.com/apache/arrow/go/v17/parquet"

	"github.com/fhirlake/fhirlake/schema"
)

// TestLayoutColumnsStandAlone: a Table's layout describes each leaf column with a node of its own, not the
// Parquet schema's tree, which it does not keep: the descriptor a leaf makes from it says what the tree's does,
// for statistics (type, sort order, levels), and so does the layout, for encoding (dictionary by path, statistics
// size). The layout keeps no path: columnPath finds it in the schema.
func TestLayoutColumnsStandAlone(t *testing.T) {
	reg, err := schema.New(schema.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"Observation", "ExplanationOfBenefit", "Patient"} {
		res, err := reg.Build(typ)
		if err != nil {
			t.Fatal(err)
		}
		props := parquet.NewWriterProperties(parquet.WithDictionaryFor("meta.versionId", false),
			parquet.WithMaxStatsSize(16))
		l, err := newTableLayout(res.Schema, props)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := l.parquetSchema()
		if err != nil {
			t.Fatal(err)
		}
		if len(l.leaves) != ps.NumColumns() {
			t.Fatalf("%s: %d leaves for %d columns", typ, len(l.leaves), ps.NumColumns())
		}
		var noDict, smallStats int
		for i := range l.leaves {
			c, want := l.leaves[i].descr(), ps.Column(i)
			if c.SchemaNode().Parent() != nil {
				t.Fatalf("%s: column %s keeps its place in the schema tree", typ, want.Path())
			}
			if c.Name() != want.Name() || c.PhysicalType() != want.PhysicalType() ||
				!c.LogicalType().Equals(want.LogicalType()) || c.ConvertedType() != want.ConvertedType() ||
				c.SortOrder() != want.SortOrder() || c.ColumnOrder() != want.ColumnOrder() ||
				c.MaxDefinitionLevel() != want.MaxDefinitionLevel() || c.MaxRepetitionLevel() != want.MaxRepetitionLevel() {
				t.Errorf("%s: column %s: descriptor\n%s\nwant\n%s", typ, want.Path(), c, want)
			}
			if l.leaves[i].node.sort != want.SortOrder() {
				t.Errorf("%s: column %s: sort order %v, the schema's %v", typ, want.Path(), l.leaves[i].node.sort, want.SortOrder())
			}
			if i%97 == 0 && l.columnPath(i) != want.Path() {
				t.Errorf("%s: leaf %d has path %s, the schema %s", typ, i, l.columnPath(i), want.Path())
			}
			wantDict := want.PhysicalType() != parquet.Types.Boolean && props.DictionaryEnabledFor(want.Path())
			if l.leaves[i].dict != wantDict || int(l.leaves[i].maxStats) != int(props.MaxStatsSizeFor(want.Path())) {
				t.Errorf("%s: column %s: dictionary %v, statistics up to %d bytes; the properties say %v and %d", typ,
					want.Path(), l.leaves[i].dict, l.leaves[i].maxStats, wantDict, props.MaxStatsSizeFor(want.Path()))
			}
			if want.Path() == "meta.versionId" && !l.leaves[i].dict {
				noDict++
			}
			if l.leaves[i].maxStats == 16 {
				smallStats++
			}
		}
		if noDict != 1 || smallStats != len(l.leaves) {
			t.Errorf("%s: meta.versionId %d times without a dictionary, %d of %d leaves with the statistics limit: the properties did not reach them",
				typ, noDict, smallStats, len(l.leaves))
		}
	}
}
