package transform

import (
	"bytes"
	"slices"
)

// dupKeys finds objects with two members of the same name. RFC 8259 leaves the meaning of such an object to the
// reader: the library keeps the last member, other readers of the same line (BigQuery, DuckDB, a person) may keep
// the first, so the line has no single meaning and is rejected. It keeps scratch space between lines: one per
// Validator.
type dupKeys struct {
	names  [][]byte // member names of the open objects, unescaped, innermost object's last
	starts []int    // per open object, where its names start
	open   []byte   // the open containers, '{' or '['
}

// find reports whether some object of the well-formed JSON b has a member name twice (compared after
// unescaping), and whether that is the top-level "resourceType", which leaves the line without a type. It makes
// one pass over b and sorts each object's names when it closes, so a huge object costs n log n, not n².
func (d *dupKeys) find(b []byte) (found, resourceType bool) {
	d.names, d.starts, d.open = d.names[:0], d.starts[:0], d.open[:0]
	defer clear(d.names[:cap(d.names)]) // keep no reference to the line
	expectName := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			end := stringEnd(b, i)
			if expectName {
				expectName = false
				name := b[i+1 : end-1]
				if bytes.IndexByte(name, '\\') >= 0 {
					s, _ := jsonString(b[i:end])
					name = []byte(s)
				}
				d.names = append(d.names, name)
			}
			i = end - 1
		case '{':
			d.open = append(d.open, c)
			d.starts = append(d.starts, len(d.names))
			expectName = true
		case '[':
			d.open = append(d.open, c)
		case ',':
			expectName = len(d.open) > 0 && d.open[len(d.open)-1] == '{'
		case '}':
			start := d.starts[len(d.starts)-1]
			names := d.names[start:]
			slices.SortFunc(names, bytes.Compare)
			for j := 1; j < len(names); j++ {
				if bytes.Equal(names[j-1], names[j]) {
					return true, len(d.starts) == 1 && string(names[j]) == "resourceType"
				}
			}
			d.names = d.names[:start]
			d.starts = d.starts[:len(d.starts)-1]
			d.open = d.open[:len(d.open)-1]
		case ']':
			d.open = d.open[:len(d.open)-1]
		}
	}
	return false, false
}
