package transform

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/fhirlake/fhirlake/schema"
)

// This file reads Arrow rows back into FHIR JSON shape (independently of convert.go) and compares them with the
// source JSON, for the round-trip tests.

// rowJSON rebuilds the FHIR JSON of one row: choice structs become valueX keys, JSON-string columns are parsed
// back, _primitiveExtensions is spread back into "_x" keys, derived columns are left out. Leaves are Go values:
// string, bool, int64, float64, time.Time, []byte, json.Number (inside JSON columns).
func rowJSON(res *schema.Resource, rec arrow.Record, row int) (map[string]any, error) {
	obj := map[string]any{"resourceType": res.Type}
	for i, n := range res.Fields {
		col := rec.Column(i)
		if n.Derived == schema.PrimitiveExtensions {
			if !col.IsValid(row) {
				continue
			}
			var pe map[string]any
			if err := decodeJSON([]byte(col.(*array.String).Value(row)), &pe); err != nil {
				return nil, fmt.Errorf("_primitiveExtensions: %w", err)
			}
			if len(pe) == 0 {
				return nil, fmt.Errorf("_primitiveExtensions is an empty object, want null")
			}
			if err := spreadPrimitiveExtensions(obj, pe); err != nil {
				return nil, err
			}
			continue
		}
		if err := putMember(obj, n, col, row); err != nil {
			return nil, err
		}
	}
	return obj, nil
}

func putMember(obj map[string]any, n *schema.Node, col arrow.Array, row int) error {
	if n.Derived != schema.NotDerived || !col.IsValid(row) {
		return nil
	}
	if n.Kind == schema.Choice {
		st := col.(*array.Struct)
		set := 0
		for j, c := range n.Children {
			if st.Field(j).IsValid(row) {
				v, err := arrowValue(c, st.Field(j), row)
				if err != nil {
					return err
				}
				obj[n.Name+strings.ToUpper(c.Name[:1])+c.Name[1:]] = v
				set++
			}
		}
		if set != 1 {
			return fmt.Errorf("%s: %d choice children set", n.Path(), set)
		}
		return nil
	}
	v, err := arrowValue(n, col, row)
	if err != nil {
		return err
	}
	obj[n.Name] = v
	return nil
}

func arrowValue(n *schema.Node, col arrow.Array, row int) (any, error) {
	if !n.Repeated {
		return arrowItem(n, col, row)
	}
	l := col.(*array.List)
	start, end := l.ValueOffsets(row)
	out := []any{}
	for k := int(start); k < int(end); k++ {
		if !l.ListValues().IsValid(k) {
			out = append(out, nil)
			continue
		}
		v, err := arrowItem(n, l.ListValues(), k)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func arrowItem(n *schema.Node, col arrow.Array, row int) (any, error) {
	switch n.Kind {
	case schema.Struct:
		st := col.(*array.Struct)
		m := map[string]any{}
		for j, c := range n.Children {
			if err := putMember(m, c, st.Field(j), row); err != nil {
				return nil, err
			}
		}
		return m, nil
	case schema.JSON:
		var v any
		if err := decodeJSON([]byte(col.(*array.String).Value(row)), &v); err != nil {
			return nil, fmt.Errorf("%s: %w", n.Path(), err)
		}
		return v, nil
	case schema.Primitive:
		switch a := col.(type) {
		case *array.String:
			return a.Value(row), nil
		case *array.Boolean:
			return a.Value(row), nil
		case *array.Int64:
			return a.Value(row), nil
		case *array.Float64:
			return a.Value(row), nil
		case *array.Timestamp:
			return time.UnixMicro(int64(a.Value(row))).UTC(), nil
		case *array.Binary:
			return slices.Clone(a.Value(row)), nil
		}
		return nil, fmt.Errorf("%s: unexpected array %T", n.Path(), col)
	}
	return nil, fmt.Errorf("%s: unexpected kind %v", n.Path(), n.Kind)
}

func decodeJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// spreadPrimitiveExtensions puts each entry "a[0].b[1]" of _primitiveExtensions back as obj.a[0]._b[1].
func spreadPrimitiveExtensions(obj map[string]any, pe map[string]any) error {
	for path, v := range pe {
		segs := strings.Split(path, ".")
		cur := obj
		for i, seg := range segs {
			name, idx, err := splitIndex(seg)
			if err != nil {
				return fmt.Errorf("_primitiveExtensions key %q: %w", path, err)
			}
			if i == len(segs)-1 {
				if idx < 0 {
					cur["_"+name] = v
					continue
				}
				arr, _ := cur["_"+name].([]any)
				n := idx + 1
				if vals, ok := cur[name].([]any); ok {
					n = max(n, len(vals))
				}
				for len(arr) < n {
					arr = append(arr, nil)
				}
				arr[idx] = v
				cur["_"+name] = arr
				continue
			}
			next := cur[name]
			if idx >= 0 {
				arr, ok := next.([]any)
				if !ok || idx >= len(arr) {
					return fmt.Errorf("_primitiveExtensions key %q: no array item at %s", path, seg)
				}
				next = arr[idx]
			}
			m, ok := next.(map[string]any)
			if !ok {
				return fmt.Errorf("_primitiveExtensions key %q: no object at %s", path, seg)
			}
			cur = m
		}
	}
	return nil
}

func splitIndex(seg string) (string, int, error) {
	i := strings.IndexByte(seg, '[')
	if i < 0 {
		return seg, -1, nil
	}
	if !strings.HasSuffix(seg, "]") {
		return "", 0, fmt.Errorf("bad segment")
	}
	n, err := strconv.Atoi(seg[i+1 : len(seg)-1])
	return seg[:i], n, err
}

// jsonDiff compares source JSON (decoded with UseNumber) with a rebuilt row and returns the path of the first
// difference, or "". Numbers, instants and base64 compare by value; "_x" arrays ignore trailing nulls.
func jsonDiff(path string, src, got any) string {
	switch s := src.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return path + ": object became " + fmt.Sprintf("%T", got)
		}
		keys := make([]string, 0, len(s))
		for k := range s {
			keys = append(keys, k)
		}
		for k := range g {
			if _, ok := s[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			sv, sok := s[k]
			gv, gok := g[k]
			if sok != gok {
				if (sv == nil && !gok) || (gv == nil && !sok) {
					continue // an explicit null is absent
				}
				return fmt.Sprintf("%s.%s: present in source %v, in row %v", path, k, sok, gok)
			}
			if strings.HasPrefix(k, "_") {
				sv, gv = trimNulls(sv), trimNulls(gv)
			}
			if d := jsonDiff(path+"."+k, sv, gv); d != "" {
				return d
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok {
			return path + ": array became " + fmt.Sprintf("%T", got)
		}
		if len(s) != len(g) {
			return fmt.Sprintf("%s: %d items became %d", path, len(s), len(g))
		}
		for i := range s {
			if d := jsonDiff(fmt.Sprintf("%s[%d]", path, i), s[i], g[i]); d != "" {
				return d
			}
		}
		return ""
	case json.Number:
		switch g := got.(type) {
		case json.Number:
			if s == g {
				return ""
			}
		case int64:
			if f, err := s.Float64(); err == nil && f == float64(g) {
				return ""
			}
		case float64:
			if f, err := strconv.ParseFloat(string(s), 64); (err == nil || math.IsInf(f, 0)) && f == g {
				return ""
			}
		}
		return path + ": number differs"
	case string:
		switch g := got.(type) {
		case string:
			if s == g {
				return ""
			}
		case time.Time:
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil && t.Truncate(time.Microsecond).Equal(g) {
				return ""
			}
		case []byte:
			clean := strings.Map(func(r rune) rune {
				if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
					return -1
				}
				return r
			}, s)
			if b, err := base64.StdEncoding.DecodeString(clean); err == nil && bytes.Equal(b, g) {
				return ""
			}
		}
		return path + ": string value differs"
	case bool:
		if g, ok := got.(bool); ok && g == s {
			return ""
		}
		return path + ": boolean differs"
	case nil:
		if got == nil {
			return ""
		}
		return path + ": null became a value"
	}
	return fmt.Sprintf("%s: unexpected source type %T", path, src)
}

func trimNulls(v any) any {
	a, ok := v.([]any)
	if !ok {
		return v
	}
	for len(a) > 0 && a[len(a)-1] == nil {
		a = a[:len(a)-1]
	}
	return a
}
