// Package acceptance checks fhirlake's published output with an independent reader, DuckDB, on the real data in
// ../shared/data. It is a module of its own so that the cgo DuckDB driver stays out of fhirlake's dependencies.
package acceptance

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2"
	"gocloud.dev/blob/fileblob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/sinks"
)

const sharedData = "../../shared/data"

func sharedDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(sharedData, name)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s is absent: %v", dir, err)
	}
	return dir
}

// convert runs fhirlake over dir into a fresh local directory and returns it with the manifest.
func convert(t *testing.T, dir string) (string, *sinks.Manifest) {
	t.Helper()
	src, err := fileblob.OpenBucket(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := t.TempDir()
	dst, err := fileblob.OpenBucket(out, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	m, err := pipeline.Run(context.Background(), pipeline.Source{Bucket: src, Name: dir}, pipeline.Sink{Bucket: dst}, pipeline.Options{})
	if err != nil {
		t.Fatalf("convert %s: %v", dir, err)
	}
	return out, m
}

func openDuckDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatalf("open duckdb: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// tableCounts asks DuckDB for the row count of every table directory under out.
func tableCounts(t *testing.T, db *sql.DB, out string) map[string]int64 {
	t.Helper()
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), "_") {
			continue
		}
		var n int64
		q := fmt.Sprintf("SELECT count(*) FROM read_parquet('%s/*.parquet')", filepath.Join(out, e.Name()))
		if err := db.QueryRow(q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		counts[e.Name()] = n
	}
	return counts
}

func lineCounts(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int64{}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 8<<20)
		for sc.Scan() {
			if len(bytes.TrimSpace(sc.Bytes())) > 0 {
				counts[strings.TrimSuffix(e.Name(), ".ndjson")]++
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return counts
}

// TestSynthea100 reads the tables of the 100-patient bulk export back with DuckDB: 38,483 rows over 19 tables,
// each table as long as its source file, and no rejects.
func TestSynthea100(t *testing.T) {
	dir := sharedDir(t, "synthea-100")
	out, m := convert(t, dir)
	db := openDuckDB(t)
	got := tableCounts(t, db, out)
	want := lineCounts(t, dir)
	var total int64
	for typ, n := range want {
		if got[typ] != n {
			t.Errorf("%s: DuckDB reads %d rows, the source has %d lines", typ, got[typ], n)
		}
		total += got[typ]
	}
	if len(got) != 19 || total != 38483 {
		t.Errorf("DuckDB reads %d rows in %d tables, want 38483 in 19", total, len(got))
	}
	if m.Totals.Rejected != 0 {
		t.Errorf("%d rejects, want 0", m.Totals.Rejected)
	}
	if _, err := os.Stat(filepath.Join(out, "_rejects")); !os.IsNotExist(err) {
		t.Errorf("_rejects exists for a run without rejects (stat: %v)", err)
	}

	// A join an analyst writes: every Observation's subject resolves to a Patient by the parsed reference id.
	var orphans int64
	q := fmt.Sprintf(`SELECT count(*) FROM read_parquet('%[1]s/Observation/*.parquet') o
		LEFT JOIN read_parquet('%[1]s/Patient/*.parquet') p ON o.subject.referenceId = p.id
		WHERE p.id IS NULL`, out)
	if err := db.QueryRow(q).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Errorf("%d Observations whose subject.referenceId matches no Patient", orphans)
	}
}

// TestR4Examples reads every HL7 R4 example table back: one table per type present, rows = source lines minus
// the 17 rejects, and the four examples of ../shared/data/r4-bigquery (and more) equal their source JSON.
func TestR4Examples(t *testing.T) {
	if testing.Short() {
		t.Skip("r4-examples takes minutes; skipped in -short")
	}
	dir := sharedDir(t, "r4-examples")
	out, m := convert(t, dir)
	db := openDuckDB(t)
	got := tableCounts(t, db, out)
	want := lineCounts(t, dir)
	var rows, lines int64
	for typ, n := range want {
		lines += n
		rows += got[typ]
		if r := m.Resources[typ]; got[typ] != n-r.Rejected {
			t.Errorf("%s: DuckDB reads %d rows, want %d lines - %d rejected", typ, got[typ], n, r.Rejected)
		}
	}
	if lines != 5297 || rows != 5297-17 || m.Totals.Rejected != 17 {
		t.Errorf("%d lines, %d rows read back, %d rejected; want 5297, 5280, 17", lines, rows, m.Totals.Rejected)
	}

	for _, tc := range []struct{ typ, id string }{
		{"Composition", "example"},
		{"Encounter", "home"},
		{"Observation", "example-genetics-1"},
		{"Patient", "example"},
		{"Observation", "example"},
		{"Questionnaire", "3141"},
		{"ValueSet", "example-expansion"},
		{"Bundle", "bundle-example"},
		{"Media", "example"},
		{"Claim", "100150"},
	} {
		t.Run(tc.typ+"/"+tc.id, func(t *testing.T) {
			src := sourceResource(t, dir, tc.typ, tc.id)
			q := fmt.Sprintf("SELECT CAST(to_json(t) AS VARCHAR) FROM read_parquet('%s/%s/*.parquet') t WHERE id = ?", out, tc.typ)
			var row string
			if err := db.QueryRow(q, tc.id).Scan(&row); err != nil {
				t.Fatalf("read back: %v", err)
			}
			var got map[string]any
			if err := decode([]byte(row), &got); err != nil {
				t.Fatalf("DuckDB's JSON: %v", err)
			}
			delete(src, "resourceType")
			var c comparer
			c.object(tc.typ, src, got)
			for _, d := range c.diffs {
				t.Error(d)
			}
			if c.leaves == 0 {
				t.Error("compared nothing")
			}
		})
	}
}

func sourceResource(t *testing.T, dir, typ, id string) map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, typ+".ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 8<<20)
	for sc.Scan() {
		var r map[string]any
		if err := decode(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r["id"] == id {
			return r
		}
	}
	t.Fatalf("%s/%s not in %s", typ, id, dir)
	return nil
}

func decode(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	return d.Decode(v)
}

// comparer walks a source FHIR JSON value beside the row DuckDB read back, knowing only the documented shape:
// choice elements as structs (valueQuantity -> value.quantity), primitive extensions in _primitiveExtensions,
// and JSON text where the schema keeps JSON (extension, contained, beyond the recursion depth).
type comparer struct {
	diffs  []string
	leaves int
}

func (c *comparer) fail(path, format string, args ...any) {
	if len(c.diffs) < 20 {
		c.diffs = append(c.diffs, path+": "+fmt.Sprintf(format, args...))
	}
}

func (c *comparer) object(path string, src, row map[string]any) {
	keys := make([]string, 0, len(src))
	for k := range src {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var prim map[string]any
	if s, ok := row["_primitiveExtensions"].(string); ok {
		if err := decode([]byte(s), &prim); err != nil {
			c.fail(path, "_primitiveExtensions is not JSON: %v", err)
		}
	}
	for _, k := range keys {
		sv := src[k]
		if strings.HasPrefix(k, "_") {
			continue // checked at the top level through _primitiveExtensions (below)
		}
		if rv, ok := row[k]; ok {
			c.value(path+"."+k, sv, rv)
			continue
		}
		if parent, child, ok := choice(k, row); ok {
			c.value(path+"."+k, sv, parent[child])
			continue
		}
		c.fail(path+"."+k, "no column")
	}
	if prim != nil {
		for k, v := range src {
			if strings.HasPrefix(k, "_") {
				c.value(path+"."+k, v, prim[strings.TrimPrefix(k, "_")])
			}
		}
	}
}

// choice finds the struct column of a choice element: "valueQuantity" -> row["value"]["quantity"].
func choice(k string, row map[string]any) (map[string]any, string, bool) {
	for i := len(k) - 1; i > 0; i-- {
		if k[i] < 'A' || k[i] > 'Z' {
			continue
		}
		parent, ok := row[k[:i]].(map[string]any)
		if !ok {
			continue
		}
		child := strings.ToLower(k[i:i+1]) + k[i+1:]
		if _, ok := parent[child]; ok {
			return parent, child, true
		}
	}
	return nil, "", false
}

func (c *comparer) value(path string, src, row any) {
	if s, ok := row.(string); ok {
		switch src.(type) {
		case map[string]any, []any:
			// JSON text: it must parse back to the original element.
			var parsed any
			if err := decode([]byte(s), &parsed); err != nil {
				c.fail(path, "JSON text does not parse: %v", err)
				return
			}
			row = parsed
		}
	}
	switch sv := src.(type) {
	case map[string]any:
		rv, ok := row.(map[string]any)
		if !ok {
			c.fail(path, "source is an object, row has %T", row)
			return
		}
		if _, isText := row.(string); isText {
			return
		}
		if looksLikeResource(sv) && rv["resourceType"] != nil {
			c.object(path, sv, rv) // an inline resource kept as JSON text
			return
		}
		c.object(path, sv, rv)
	case []any:
		rv, ok := row.([]any)
		if !ok {
			c.fail(path, "source is a list, row has %T", row)
			return
		}
		if len(rv) != len(sv) {
			c.fail(path, "%d items, source has %d", len(rv), len(sv))
			return
		}
		for i := range sv {
			c.value(fmt.Sprintf("%s[%d]", path, i), sv[i], rv[i])
		}
	default:
		c.leaves++
		if !sameLeaf(src, row) {
			c.fail(path, "value differs (types %T and %T)", src, row)
		}
	}
}

func looksLikeResource(m map[string]any) bool { _, ok := m["resourceType"]; return ok }

// sameLeaf compares a primitive of the source with its column as DuckDB renders it in JSON: numbers as numbers,
// instants as "2013-05-05 16:13:03+00", base64Binary as a blob with \xNN escapes.
func sameLeaf(src, row any) bool {
	switch sv := src.(type) {
	case bool:
		return sv == row
	case json.Number:
		a, err1 := sv.Float64()
		var b float64
		var err2 error
		switch rv := row.(type) {
		case json.Number:
			b, err2 = rv.Float64()
		case string:
			b, err2 = strconv.ParseFloat(rv, 64)
		default:
			return false
		}
		return err1 == nil && err2 == nil && (a == b || math.Abs(a-b) <= 1e-12*math.Abs(a))
	case string:
		rv, ok := row.(string)
		if !ok {
			return false
		}
		if sv == rv {
			return true
		}
		if a, err := time.Parse(time.RFC3339Nano, sv); err == nil {
			for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999Z07:00"} {
				if b, err := time.Parse(layout, rv); err == nil && a.Equal(b) {
					return true
				}
			}
		}
		// base64Binary may hold whitespace (the HL7 Media example does); the column holds the decoded bytes.
		if raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(sv), "")); err == nil {
			return bytes.Equal(raw, unescapeBlob(rv))
		}
		return false
	}
	return false
}

// unescapeBlob undoes DuckDB's BLOB rendering: printable ASCII as is, every other byte as \xNN.
func unescapeBlob(s string) []byte {
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && s[i+1] == 'x' {
			if v, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				out = append(out, byte(v))
				i += 3
				continue
			}
		}
		out = append(out, s[i])
	}
	return out
}
