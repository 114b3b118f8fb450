package schema

import (
	"fmt"
	"slices"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
)

// Format renders a schema as stable, indented text for golden files: metadata first (sorted by key), then one
// line per field, children indented under structs and lists of structs.
//
//	name: list<struct>
//	  given: list<utf8>
func Format(s *arrow.Schema) string {
	var sb strings.Builder
	md := s.Metadata()
	keys := slices.Clone(md.Keys())
	slices.Sort(keys)
	for _, k := range keys {
		v, _ := md.GetValue(k)
		fmt.Fprintf(&sb, "# %s = %s\n", k, v)
	}
	for _, f := range s.Fields() {
		formatField(&sb, f, 0)
	}
	return sb.String()
}

func formatField(sb *strings.Builder, f arrow.Field, depth int) {
	typ := f.Type
	prefix, suffix := "", ""
	if l, ok := typ.(*arrow.ListType); ok {
		prefix, suffix = "list<", ">"
		typ = l.Elem()
	}
	null := ""
	if !f.Nullable {
		null = " not null"
	}
	st, isStruct := typ.(*arrow.StructType)
	name := "struct"
	if !isStruct {
		name = typ.String()
	}
	fmt.Fprintf(sb, "%s%s: %s%s%s%s\n", strings.Repeat("  ", depth), f.Name, prefix, name, suffix, null)
	if isStruct {
		for _, c := range st.Fields() {
			formatField(sb, c, depth+1)
		}
	}
}
