package pipeline_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/sinks"
)

const sharedData = "../../shared/data"

func fixedClock() func() time.Time {
	t := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return func() time.Time { t = t.Add(time.Second); return t }
}

func openDir(t *testing.T, dir string) *blob.Bucket {
	t.Helper()
	b, err := fileblob.OpenBucket(dir, nil)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func memBucket(t *testing.T) *blob.Bucket {
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	return b
}

func checked(t *testing.T) memory.Allocator {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return mem
}

func runDir(t *testing.T, dir string, dst *blob.Bucket, opts pipeline.Options) *sinks.Manifest {
	t.Helper()
	opts.Allocator = checked(t)
	if opts.Now == nil {
		opts.Now = fixedClock()
	}
	m, err := pipeline.Run(context.Background(),
		pipeline.Source{Bucket: openDir(t, dir), Name: dir},
		pipeline.Sink{Bucket: dst, Prefix: "out"}, opts)
	if err != nil {
		t.Fatalf("run over %s: %v", dir, err)
	}
	return m
}

// parquetRows reads a committed part file back and returns its row count.
func parquetRows(t *testing.T, b *blob.Bucket, key string) int64 {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	rdr, err := file.NewParquetReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("open parquet %s: %v", key, err)
	}
	defer rdr.Close()
	return rdr.NumRows()
}

func readLines(t *testing.T, b *blob.Bucket, key string) []string {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

func listKeys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		o, err := it.Next(context.Background())
		if err != nil {
			break
		}
		keys = append(keys, o.Key)
	}
	sort.Strings(keys)
	return keys
}

// TestRunMixed covers the accounting of one small run: CRLF, a BOM, blank lines, gzip, an object without an
// extension, an invalid resource, and four lines that cannot be parsed as a resource of a known type.
func TestRunMixed(t *testing.T) {
	dst := memBucket(t)
	m := runDir(t, "testdata/mixed", dst, pipeline.Options{Workers: 2})

	want := sinks.Totals{Lines: 11, Valid: 6, Rejected: 5, Rows: 6, Unparsed: 4, ValidByReference: 6} // the reference validates all
	if m.Totals != want {
		t.Errorf("totals = %+v, want %+v", m.Totals, want)
	}
	for typ, w := range map[string]struct{ valid, rejected, rows int64 }{
		"Patient":     {1, 1, 1},
		"Observation": {5, 0, 5},
	} {
		got := m.Resources[typ]
		if got.Valid != w.valid || got.Rejected != w.rejected || got.Rows != w.rows {
			t.Errorf("%s = %+v, want valid %d rejected %d rows %d", typ, got, w.valid, w.rejected, w.rows)
		}
		var rows int64
		for _, f := range got.Files {
			rows += parquetRows(t, dst, "out/"+f.Key)
		}
		if rows != w.rows {
			t.Errorf("%s parquet rows read back = %d, want %d", typ, rows, w.rows)
		}
	}
	if len(m.Resources) != 2 {
		t.Errorf("resources = %v, want Patient and Observation only", m.Resources)
	}
	if len(m.Inputs) != 3 {
		t.Errorf("inputs = %+v, want 3 objects", m.Inputs)
	}

	// The invalid Patient is quarantined byte for byte (without its CRLF), with a reason naming the element.
	src, err := os.ReadFile("testdata/mixed/Patient.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	srcLines := strings.Split(string(src), "\r\n")
	if got := readLines(t, dst, "out/_rejects/Patient.ndjson"); len(got) != 1 || got[0] != srcLines[2] {
		t.Errorf("_rejects/Patient.ndjson = %q, want the source's line 3 verbatim", got)
	}
	if got := readLines(t, dst, "out/_rejects/_unparsed.ndjson"); len(got) != 4 {
		t.Errorf("_rejects/_unparsed.ndjson has %d lines, want 4", len(got))
	}
	type errorLine struct {
		Source       string `json:"source"`
		Line         int64  `json:"line"`
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Issues       []struct{ Path, Code, Detail string }
	}
	var errs []errorLine
	for _, l := range readLines(t, dst, "out/_rejects/errors.ndjson") {
		var e errorLine
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("errors.ndjson line %q: %v", l, err)
		}
		if len(e.Issues) == 0 {
			t.Errorf("reject %s:%d has no issues", e.Source, e.Line)
		}
		errs = append(errs, e)
	}
	if len(errs) != 5 {
		t.Fatalf("errors.ndjson has %d lines, want 5", len(errs))
	}
	var found bool
	for _, e := range errs {
		if e.Source == "Patient.ndjson" && e.Line == 3 && e.ID == "bad-birthdate" {
			found = true
			if !strings.Contains(e.Issues[0].Path, "birthDate") {
				t.Errorf("issue path = %q, want it to name birthDate", e.Issues[0].Path)
			}
			for _, is := range e.Issues {
				if strings.Contains(is.Detail, "1970-13-45") {
					t.Errorf("issue detail %q repeats the resource's value", is.Detail)
				}
			}
		}
	}
	if !found {
		t.Errorf("errors.ndjson = %+v, want the bad Patient at Patient.ndjson line 3", errs)
	}
}

// TestRunValidByReference checks that the manifest says which validator ran and counts, in total and per type,
// the valid lines the reference validated: on the fast path, only those in a shape the fast validator does not
// model (here an escaped key), so that an operator can tell why a run went at the reference's speed.
func TestRunValidByReference(t *testing.T) {
	dir := t.TempDir()
	lines := strings.Join([]string{
		`{"resourceType":"Patient","id":"plain","active":true}`,
		`{"resourceType":"Patient","id":"escaped-key","\u0061ctive":true}`,
		`{"resourceType":"Patient","id":"invalid","birthDate":"1970-13-45"}`,
		`{"resourceType":"Organization","id":"o","name":"x"}`,
	}, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "mixed.ndjson"), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		validator, want     string
		total, patient, org int64
	}{
		{validator: "fast", want: "fast", total: 1, patient: 1, org: 0},
		{validator: "", want: "reference", total: 3, patient: 2, org: 1},
	} {
		m := runDir(t, dir, memBucket(t), pipeline.Options{Workers: 1, Validator: tt.validator})
		if m.Validator != tt.want {
			t.Errorf("validator %q: manifest says %q, want %q", tt.validator, m.Validator, tt.want)
		}
		if m.Totals.Valid != 3 || m.Totals.ValidByReference != tt.total {
			t.Errorf("validator %q: totals valid %d, valid by reference %d; want 3 and %d", tt.validator,
				m.Totals.Valid, m.Totals.ValidByReference, tt.total)
		}
		if p, o := m.Resources["Patient"].ValidByReference, m.Resources["Organization"].ValidByReference; p != tt.patient || o != tt.org {
			t.Errorf("validator %q: valid by reference Patient %d, Organization %d; want %d and %d", tt.validator, p, o, tt.patient, tt.org)
		}
	}
}

// TestRunReplacesSameSource runs twice into one output: the second run replaces the first, and a stray part file
// that no manifest lists does not survive.
func TestRunReplacesSameSource(t *testing.T) {
	dst := memBucket(t)
	ctx := context.Background()
	runDir(t, "testdata/mixed", dst, pipeline.Options{})
	if err := dst.WriteAll(ctx, "out/Patient/part-00007.parquet", []byte("stale"), nil); err != nil {
		t.Fatal(err)
	}
	if err := dst.WriteAll(ctx, "out/Condition/part-00000.parquet", []byte("stale"), nil); err != nil {
		t.Fatal(err)
	}
	if err := dst.WriteAll(ctx, "out/notes.txt", []byte("not ours"), nil); err != nil {
		t.Fatal(err)
	}
	m := runDir(t, "testdata/mixed", dst, pipeline.Options{})

	listed := map[string]bool{"out/_manifest.json": true, "out/notes.txt": true}
	for _, r := range m.Resources {
		for _, f := range r.Files {
			listed["out/"+f.Key] = true
		}
	}
	for _, f := range m.Rejects {
		listed["out/"+f.Key] = true
	}
	got := listKeys(t, dst, "out/")
	for _, k := range got {
		if !listed[k] {
			t.Errorf("object %s survived but no manifest lists it", k)
		}
	}
	if len(got) != len(listed) {
		t.Errorf("objects = %v, want exactly %d", got, len(listed))
	}
}

func TestRunRefusesForeignOutput(t *testing.T) {
	dst := memBucket(t)
	runDir(t, "testdata/mixed", dst, pipeline.Options{})
	_, err := pipeline.Run(context.Background(),
		pipeline.Source{Bucket: openDir(t, "testdata/mixed"), Name: "gs://elsewhere/export"},
		pipeline.Sink{Bucket: dst, Prefix: "out"}, pipeline.Options{Allocator: checked(t)})
	if !errors.Is(err, pipeline.ErrForeignOutput) {
		t.Fatalf("err = %v, want ErrForeignOutput", err)
	}
	if m, err := sinks.ReadManifest(context.Background(), dst, "out"); err != nil || m.Source != "testdata/mixed" {
		t.Errorf("the first run's manifest must stay published: %v, %v", m, err)
	}
}

// TestRunOversizeLine quarantines a line over the limit without holding it, and goes on.
func TestRunOversizeLine(t *testing.T) {
	dir := t.TempDir()
	pat, err := os.ReadFile("testdata/mixed/Patient.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	first := strings.TrimPrefix(strings.Split(string(pat), "\r\n")[0], "\ufeff")
	long := `{"resourceType":"Basic","id":"long","text":{"status":"generated","div":"` + strings.Repeat("x", 8000) + `"}}`
	content := first + "\n" + long + "\n" + first + "\n"
	if err := os.WriteFile(filepath.Join(dir, "in.ndjson"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := memBucket(t)
	m := runDir(t, dir, dst, pipeline.Options{MaxLineBytes: 4096})
	if m.Totals.Lines != 3 || m.Totals.Valid != 2 || m.Totals.Rejected != 1 {
		t.Errorf("totals = %+v, want 3 lines, 2 valid, 1 rejected", m.Totals)
	}
	if got := readLines(t, dst, "out/_rejects/_unparsed.ndjson"); len(got) != 1 || got[0] != long {
		t.Errorf("the oversize line must be quarantined verbatim; got %d lines", len(got))
	}
	if got := readLines(t, dst, "out/_rejects/errors.ndjson"); len(got) != 1 || !strings.Contains(got[0], `"too-long"`) {
		t.Errorf("errors.ndjson = %q, want one too-long issue", got)
	}
}

func TestRunWorkersAgree(t *testing.T) {
	one := runDir(t, "testdata/mixed", memBucket(t), pipeline.Options{Workers: 1})
	many := runDir(t, "testdata/mixed", memBucket(t), pipeline.Options{Workers: 8})
	if one.Totals != many.Totals {
		t.Errorf("workers 1: %+v, workers 8: %+v", one.Totals, many.Totals)
	}
}

func TestRunProgress(t *testing.T) {
	var last pipeline.Progress
	calls := 0
	runDir(t, "testdata/mixed", memBucket(t), pipeline.Options{Progress: func(p pipeline.Progress) {
		calls++
		last = p
	}})
	if calls == 0 {
		t.Fatal("progress was never reported")
	}
	if last.ObjectsDone != 3 || last.ObjectsTotal != 3 || last.Lines != 11 || last.Rejected != 5 {
		t.Errorf("final progress = %+v, want 3/3 objects, 11 lines, 5 rejected", last)
	}
}

// TestRunTimings checks that a run with Timings accounts time to every phase: the decoders add their validate
// and build time once per batch.
func TestRunTimings(t *testing.T) {
	var tm pipeline.Timings
	runDir(t, "testdata/mixed", memBucket(t), pipeline.Options{Workers: 2, Timings: &tm})
	for name, d := range map[string]int64{
		"read": tm.Read.Load(), "validate": tm.Validate.Load(), "build": tm.Build.Load(), "write": tm.Write.Load(),
	} {
		if d <= 0 {
			t.Errorf("%s time %d, want some", name, d)
		}
	}
}

func sharedDir(t *testing.T, name string) string {
	dir := filepath.Join(sharedData, name)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("%s is absent: %v", dir, err)
	}
	return dir
}

// TestSynthea100 is the core acceptance check on a real bulk export: 38,483 rows over 19 tables, no rejects,
// every input line accounted for.
func TestSynthea100(t *testing.T) {
	if testing.Short() {
		t.Skip("synthea-100 takes minutes under -race; skipped in -short")
	}
	dir := sharedDir(t, "synthea-100")
	dst := memBucket(t)
	m := runDir(t, dir, dst, pipeline.Options{})
	want := sinks.Totals{Lines: 38483, Valid: 38483, Rows: 38483, ValidByReference: 38483}
	if m.Totals != want {
		t.Errorf("totals = %+v, want %+v", m.Totals, want)
	}
	if len(m.Resources) != 19 {
		t.Errorf("%d tables, want 19", len(m.Resources))
	}
	var rows int64
	for typ, r := range m.Resources {
		for _, f := range r.Files {
			n := parquetRows(t, dst, "out/"+f.Key)
			if n != f.Rows {
				t.Errorf("%s: %s has %d rows, the manifest says %d", typ, f.Key, n, f.Rows)
			}
			rows += n
		}
	}
	if rows != 38483 {
		t.Errorf("rows read back = %d, want 38483", rows)
	}
	var lines int64
	for _, in := range m.Inputs {
		lines += in.Lines
	}
	if lines != 38483 || len(m.Inputs) != 19 {
		t.Errorf("inputs: %d objects, %d lines; want 19 and 38483", len(m.Inputs), lines)
	}
}

// TestR4Examples runs every HL7 R4 example: a table for every type present, exactly the 17 resources the
// reference validator rejects in quarantine with reasons, lines up to 2.75 MB.
func TestR4Examples(t *testing.T) {
	if testing.Short() {
		t.Skip("r4-examples takes a while; skipped in -short")
	}
	dir := sharedDir(t, "r4-examples")
	dst := memBucket(t)
	m := runDir(t, dir, dst, pipeline.Options{})
	if m.Totals.Lines != 5297 || m.Totals.Rejected != 17 || m.Totals.Unparsed != 0 {
		t.Errorf("totals = %+v, want 5297 lines, 17 rejected, none unparsed", m.Totals)
	}
	if m.Totals.Rows != m.Totals.Valid {
		t.Errorf("rows %d != valid %d", m.Totals.Rows, m.Totals.Valid)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		typ := strings.TrimSuffix(e.Name(), ".ndjson")
		r, ok := m.Resources[typ]
		if !ok {
			t.Errorf("no manifest entry for %s", typ)
			continue
		}
		if r.Valid > 0 && len(r.Files) == 0 {
			t.Errorf("%s has %d valid rows but no table", typ, r.Valid)
		}
	}
	errs := readLines(t, dst, "out/_rejects/errors.ndjson")
	if len(errs) != 17 {
		t.Errorf("errors.ndjson has %d lines, want 17", len(errs))
	}
	for _, l := range errs {
		if !strings.Contains(l, `"path":"`) {
			t.Errorf("reject without an issue path: %.200s", l)
		}
	}
}

// TestInvalidCases runs the HL7 validator's test cases: every case google/fhir/go rejects lands in _rejects with
// an issue, malformed JSON lands in _unparsed, and the run completes.
func TestInvalidCases(t *testing.T) {
	dir := sharedDir(t, "invalid/fhir-test-cases/cases")
	// Each case is one pretty-printed resource; make an NDJSON object of them.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ndjson bytes.Buffer
	var malformed int
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, data); err != nil {
			malformed++
			buf.Reset()
			buf.Write(bytes.Join(bytes.Fields(data), []byte(" ")))
		}
		ndjson.Write(buf.Bytes())
		ndjson.WriteByte('\n')
	}
	in := t.TempDir()
	if err := os.WriteFile(filepath.Join(in, "cases.ndjson"), ndjson.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := memBucket(t)
	m := runDir(t, in, dst, pipeline.Options{})
	if m.Totals.Lines != int64(len(entries)) || m.Totals.Valid+m.Totals.Rejected != m.Totals.Lines {
		t.Errorf("totals = %+v for %d cases", m.Totals, len(entries))
	}
	if m.Totals.Unparsed < int64(malformed) {
		t.Errorf("unparsed = %d, want at least the %d malformed cases", m.Totals.Unparsed, malformed)
	}
	if m.Totals.Rejected == 0 {
		t.Error("no case was rejected")
	}
	for _, l := range readLines(t, dst, "out/_rejects/errors.ndjson") {
		var e struct {
			Issues []struct{ Path, Code string }
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil || len(e.Issues) == 0 || e.Issues[0].Code == "" {
			t.Errorf("reject without a coded issue: %.200s", l)
		}
	}
}
