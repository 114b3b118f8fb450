package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/sinks"
)

// tableRows reads the part files of a table back and returns its rows as JSON objects, sorted (a row holds its
// id, so this is an order by id that also orders the rare equal ids).
func tableRows(t *testing.T, b *blob.Bucket, files []sinks.File) []string {
	t.Helper()
	mem := checked(t)
	var rows []string
	for _, f := range files {
		data, err := b.ReadAll(context.Background(), "out/"+f.Key)
		if err != nil {
			t.Fatal(err)
		}
		tbl, err := pqarrow.ReadTable(context.Background(), bytes.NewReader(data), nil, pqarrow.ArrowReadProperties{}, mem)
		if err != nil {
			t.Fatalf("read %s: %v", f.Key, err)
		}
		tr := array.NewTableReader(tbl, 0)
		for tr.Next() {
			var buf bytes.Buffer
			if err := array.RecordToJSON(tr.Record(), &buf); err != nil {
				t.Fatal(err)
			}
			for l := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
				if l != "" {
					rows = append(rows, l)
				}
			}
		}
		tr.Release()
		tbl.Release()
	}
	slices.Sort(rows)
	return rows
}

type link struct {
	PatientID       string  `json:"patient_id"`
	ResourceType    string  `json:"resource_type"`
	ResourceID      string  `json:"resource_id"`
	ResourceVersion *string `json:"resource_version"`
	Position        int64   `json:"position"`
	Source          string  `json:"source"`
	Line            int64   `json:"line"`
}

func readLinks(t *testing.T, b *blob.Bucket, m *sinks.Manifest) []link {
	t.Helper()
	var out []link
	for _, r := range tableRows(t, b, m.PatientLinks) {
		var l link
		if err := json.Unmarshal([]byte(r), &l); err != nil {
			t.Fatalf("link row %s: %v", r, err)
		}
		out = append(out, l)
	}
	return out
}

// ids returns the ids of a table's rows.
func ids(t *testing.T, b *blob.Bucket, files []sinks.File) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, r := range tableRows(t, b, files) {
		var row struct{ ID string }
		if err := json.Unmarshal([]byte(r), &row); err != nil {
			t.Fatal(err)
		}
		out[row.ID] = true
	}
	return out
}

// perTypeCopy writes the distinct resources of a per-Patient export as one file per type, as a store export of
// the same resources would: the key is decoded here in full, independently of the pipeline's.
func perTypeCopy(t *testing.T, dir string) string {
	t.Helper()
	out := t.TempDir()
	files := map[string]*bytes.Buffer{}
	seen := map[string]bool{}
	for _, name := range []string{"Patient.ndjson", "Group.ndjson"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for l := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
			var r struct {
				ResourceType, ID string
				Meta             struct{ VersionID, LastUpdated string }
			}
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatal(err)
			}
			v := r.Meta.VersionID
			if v == "" {
				v = r.Meta.LastUpdated
			}
			k := r.ResourceType + "/" + r.ID + "/" + v
			if seen[k] {
				continue
			}
			seen[k] = true
			if files[r.ResourceType] == nil {
				files[r.ResourceType] = &bytes.Buffer{}
			}
			files[r.ResourceType].WriteString(l + "\n")
		}
	}
	for typ, buf := range files {
		if err := os.WriteFile(filepath.Join(out, typ+".ndjson"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestGroupByPatient is the acceptance check of per-Patient exports on ../shared/data/synthea-group-by-patient:
// 10,641 distinct rows in 17 tables plus 1 Group, 27 Patients, 10,655 links all pointing at rows, 14 duplicates;
// the same tables as a per-type export of the same resources; the same output with 1 and 8 workers.
func TestGroupByPatient(t *testing.T) {
	if testing.Short() {
		t.Skip("three whole-data runs; skipped in -short (TestMalformedBlocks covers blocks, dedupe and links)")
	}
	dir := sharedDir(t, "synthea-group-by-patient")
	dst1, dst8 := memBucket(t), memBucket(t)
	m1 := runDir(t, dir, dst1, pipeline.Options{Workers: 1})
	m8 := runDir(t, dir, dst8, pipeline.Options{Workers: 8, BatchRows: 500})

	t.Run("counts", func(t *testing.T) {
		want := sinks.Totals{Lines: 10656, Valid: 10656, Duplicates: 14, Rows: 10642, Links: 10655, ValidByReference: 10656}
		if m8.Totals != want {
			t.Errorf("totals = %+v, want %+v", m8.Totals, want)
		}
		var rows, links int64
		for typ, r := range m8.Resources {
			if typ != "Group" {
				rows += r.Rows
			}
			links += r.Links
			if r.Lines != r.Valid+r.Rejected || r.Rows != r.Valid-r.Duplicates {
				t.Errorf("%s: %+v does not add up", typ, r)
			}
		}
		if len(m8.Resources) != 18 || rows != 10641 || m8.Resources["Group"].Rows != 1 || links != 10655 {
			t.Errorf("%d tables, %d rows besides Group, Group %d, links %d; want 18, 10641, 1, 10655",
				len(m8.Resources), rows, m8.Resources["Group"].Rows, links)
		}
		if p := m8.Resources["Patient"]; p.Rows != 27 || p.Links != 27 {
			t.Errorf("Patient = %+v, want 27 rows and 27 links", p)
		}
		if o, p := m8.Resources["Organization"], m8.Resources["Practitioner"]; o.Duplicates+p.Duplicates != 14 {
			t.Errorf("duplicates: Organization %d, Practitioner %d; want 14 together", o.Duplicates, p.Duplicates)
		}
		if len(m8.BlockIssues) != 0 {
			t.Errorf("block issues %+v, want none", m8.BlockIssues)
		}
		for _, in := range m8.Inputs {
			want := sinks.Input{Object: "Group.ndjson", Lines: 1, Layout: "per-type"}
			if in.Object == "Patient.ndjson" {
				want = sinks.Input{Object: "Patient.ndjson", Lines: 10655, Layout: "per-patient", Blocks: 27}
			}
			in.Bytes = 0
			if in != want {
				t.Errorf("input %+v, want %+v", in, want)
			}
		}
	})

	t.Run("every link points at a row", func(t *testing.T) {
		links := readLinks(t, dst8, m8)
		if len(links) != 10655 {
			t.Fatalf("%d link rows, want 10655", len(links))
		}
		rows := map[string]map[string]bool{}
		patients := map[string]bool{}
		for _, l := range links {
			if rows[l.ResourceType] == nil {
				rows[l.ResourceType] = ids(t, dst8, m8.Resources[l.ResourceType].Files)
			}
			if !rows[l.ResourceType][l.ResourceID] {
				t.Fatalf("link %s line %d points at %s row that does not exist", l.Source, l.Line, l.ResourceType)
			}
			if l.Position == 0 {
				patients[l.PatientID] = true
				if l.ResourceType != "Patient" || l.ResourceID != l.PatientID {
					t.Errorf("%s line %d: position 0 is not the block's Patient", l.Source, l.Line)
				}
			}
			if l.Source != "Patient.ndjson" {
				t.Errorf("link source %q", l.Source)
			}
		}
		if len(patients) != 27 {
			t.Errorf("%d blocks, want 27", len(patients))
		}
	})

	t.Run("workers 1 and 8 agree", func(t *testing.T) {
		if m1.Totals != m8.Totals {
			t.Errorf("totals: %+v with 1 worker, %+v with 8", m1.Totals, m8.Totals)
		}
		for typ, r8 := range m8.Resources {
			r1 := m1.Resources[typ]
			if !slices.Equal(tableRows(t, dst1, r1.Files), tableRows(t, dst8, r8.Files)) {
				t.Errorf("%s rows differ between 1 and 8 workers", typ)
			}
		}
		if !slices.Equal(tableRows(t, dst1, m1.PatientLinks), tableRows(t, dst8, m8.PatientLinks)) {
			t.Error("link rows differ between 1 and 8 workers")
		}
	})

	t.Run("same tables as a per-type export", func(t *testing.T) {
		dstT := memBucket(t)
		mt := runDir(t, perTypeCopy(t, dir), dstT, pipeline.Options{Workers: 2})
		if mt.Totals.Rows != 10642 || mt.Totals.Duplicates != 0 || mt.Totals.Links != 0 || len(mt.PatientLinks) != 0 {
			t.Errorf("per-type totals = %+v", mt.Totals)
		}
		if len(mt.Resources) != len(m8.Resources) {
			t.Errorf("%d tables per type, %d per Patient", len(mt.Resources), len(m8.Resources))
		}
		for typ, rt := range mt.Resources {
			got, want := tableRows(t, dst8, m8.Resources[typ].Files), tableRows(t, dstT, rt.Files)
			if len(got) != len(want) {
				t.Errorf("%s: %d rows per Patient, %d per type", typ, len(got), len(want))
				continue
			}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("%s: row %d differs between the layouts", typ, i)
					break
				}
			}
		}
	})
}

// Minimal valid resources for fixtures.
func patient(id string) string { return fmt.Sprintf(`{"resourceType":"Patient","id":%q}`, id) }
func obs(id string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"text":"x"}}`, id)
}
func org(id string) string {
	return fmt.Sprintf(`{"resourceType":"Organization","id":%q,"meta":{"versionId":"1"}}`, id)
}
func hdr(id string) string {
	return fmt.Sprintf(`{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"Patient/%s"}}]}`, id)
}

func writeFixture(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// malformedBlocks: a.ndjson opens with a non-Patient line and ends with a truncated line; b.ndjson (HL7 headers)
// has a header naming a Patient that never follows. org1 repeats within and across objects.
func malformedBlocks(t *testing.T) string {
	return writeFixture(t, map[string]string{
		"a.ndjson": strings.Join([]string{org("org1"), patient("p1"), obs("o1"), org("org1"), patient("p2"), obs("o2"),
			`{"resourceType":"Observation","id":"o3","status":"fin`}, "\n"),
		"b.ndjson": strings.Join([]string{hdr("p3"), patient("p3"), obs("o4"), hdr("ghost"), patient("p4"), obs("o5"),
			org("org1")}, "\n") + "\n",
	})
}

func TestMalformedBlocks(t *testing.T) {
	for _, layout := range []reader.Layout{reader.LayoutAuto, reader.LayoutPatient} {
		t.Run(string(layout), func(t *testing.T) {
			dst := memBucket(t)
			m := runDir(t, malformedBlocks(t), dst, pipeline.Options{Workers: 2, Layout: layout})
			want := sinks.Totals{Lines: 12, Valid: 11, Rejected: 1, Duplicates: 2, Rows: 9, Links: 10, BlockIssues: 3, Unparsed: 1,
				ValidByReference: 11} // the reference validator, pipeline.Options' default
			if m.Totals != want {
				t.Errorf("totals = %+v, want %+v", m.Totals, want)
			}
			wantIssues := []struct {
				object string
				line   int64
				reason string
			}{
				{"a.ndjson", 1, "does not open with a Patient"},
				{"a.ndjson", 7, "truncated"},
				{"b.ndjson", 4, "names a Patient that does not follow"},
			}
			if len(m.BlockIssues) != len(wantIssues) {
				t.Fatalf("block issues = %+v", m.BlockIssues)
			}
			for i, w := range wantIssues {
				is := m.BlockIssues[i]
				if is.Object != w.object || is.Line != w.line || !strings.Contains(is.Reason, w.reason) {
					t.Errorf("issue %d = %+v, want %s line %d %q", i, is, w.object, w.line, w.reason)
				}
				if strings.Contains(is.Reason, "ghost") || strings.Contains(is.Reason, "o3") {
					t.Errorf("issue %q repeats content", is.Reason)
				}
			}
			if o := m.Resources["Organization"]; o.Lines != 3 || o.Rows != 1 || o.Duplicates != 2 || o.Links != 2 {
				t.Errorf("Organization = %+v, want 3 lines, 1 row, 2 duplicates, 2 links", o)
			}
			if p := m.Resources["Patient"]; p.Rows != 4 || p.Links != 4 {
				t.Errorf("Patient = %+v, want 4 rows and 4 links", p)
			}
			// The truncated line is quarantined with its object and line; the rest is converted.
			errs := readLines(t, dst, "out/_rejects/errors.ndjson")
			if len(errs) != 1 || !strings.Contains(errs[0], `"source":"a.ndjson","line":7`) {
				t.Errorf("errors.ndjson = %q", errs)
			}
			for _, l := range readLinks(t, dst, m) {
				if l.Source == "a.ndjson" && l.Line == 1 {
					t.Error("the line before the first Patient is linked")
				}
				if l.PatientID == "ghost" {
					t.Error("a link names the Patient that never followed")
				}
			}
		})
	}
}

// TestDedupeVersionAsStored: a per-Patient resource is a duplicate when its meta.lastUpdated is the same instant
// spelled otherwise (the table stores the instant), and not when it is another instant.
func TestDedupeVersionAsStored(t *testing.T) {
	at := func(id, instant string) string {
		return fmt.Sprintf(`{"resourceType":"Organization","id":%q,"meta":{"lastUpdated":%q}}`, id, instant)
	}
	dir := writeFixture(t, map[string]string{
		"a.ndjson": strings.Join([]string{patient("p1"), at("org1", "2020-01-02T03:04:05Z"),
			patient("p2"), at("org1", "2020-01-02T04:04:05.000+01:00"),
			patient("p3"), at("org1", "2020-01-02T03:04:06Z")}, "\n") + "\n",
	})
	for _, workers := range []int{1, 2} {
		var last pipeline.Progress
		m := runDir(t, dir, memBucket(t), pipeline.Options{Workers: workers, Layout: reader.LayoutPatient,
			Progress: func(p pipeline.Progress) { last = p }})
		if o := m.Resources["Organization"]; o.Valid != 3 || o.Rows != 2 || o.Duplicates != 1 || o.Links != 3 {
			t.Errorf("%d workers: Organization = %+v, want 3 valid, 2 rows, 1 duplicate, 3 links", workers, o)
		}
		// The run's last progress counts the keys it holds: three Patients and two versions of org1.
		if last.DedupeKeys != 5 || last.DedupeBytes < 5*16 {
			t.Errorf("%d workers: progress holds %d keys in %d bytes, want 5 keys of 16 bytes or more", workers,
				last.DedupeKeys, last.DedupeBytes)
		}
	}
	var last pipeline.Progress
	runDir(t, writeFixture(t, map[string]string{"Patient.ndjson": patient("p1") + "\n" + patient("p2") + "\n"}),
		memBucket(t), pipeline.Options{Layout: reader.LayoutType, Progress: func(p pipeline.Progress) { last = p }})
	if last.Lines != 2 || last.DedupeKeys != 0 || last.DedupeBytes != 0 {
		t.Errorf("per-type run: progress %+v, want 2 lines and no keys", last)
	}
}

// TestLinksReplaced: a replacing run that writes no links removes the link files of the run it replaces.
func TestLinksReplaced(t *testing.T) {
	dir := malformedBlocks(t)
	dst := memBucket(t)
	m := runDir(t, dir, dst, pipeline.Options{})
	if len(m.PatientLinks) != 1 || m.PatientLinks[0].Key != "_patient_links/part-00000.parquet" {
		t.Fatalf("patient links = %+v", m.PatientLinks)
	}
	m = runDir(t, dir, dst, pipeline.Options{Layout: reader.LayoutType})
	if m.Totals.Links != 0 || m.Totals.Duplicates != 0 || m.Totals.BlockIssues != 0 {
		t.Errorf("per-type run totals = %+v", m.Totals)
	}
	if keys := listKeys(t, dst, "out/_patient_links/"); len(keys) != 0 {
		t.Errorf("stale link files survived: %v", keys)
	}
}

// TestObjectLayoutWins: an object's own Layout (an export's description) overrides the run's.
func TestObjectLayoutWins(t *testing.T) {
	dir := malformedBlocks(t)
	src := openDir(t, dir)
	objs, err := reader.List(context.Background(), src, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range objs {
		objs[i].Layout = reader.LayoutType
		if objs[i].Key == "b.ndjson" {
			objs[i].Layout = reader.LayoutPatient
		}
	}
	m, err := pipeline.Run(context.Background(), pipeline.Source{Bucket: src, Name: dir, Objects: objs},
		pipeline.Sink{Bucket: memBucket(t), Prefix: "out"},
		pipeline.Options{Layout: reader.LayoutPatient, Allocator: checked(t), Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range m.Inputs {
		want := map[string]string{"a.ndjson": "per-type", "b.ndjson": "per-patient"}[in.Object]
		if in.Layout != want {
			t.Errorf("%s read %s, want %s", in.Object, in.Layout, want)
		}
	}
	if m.Totals.Links != 5 || m.Totals.BlockIssues != 1 {
		t.Errorf("totals = %+v, want the 5 links and 1 issue of b.ndjson", m.Totals)
	}
}
