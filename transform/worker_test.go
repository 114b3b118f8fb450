package transform

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/fhirlake/fhirlake/schema"
)

const convertSharedData = "../../shared/data"

func newTestWorker(t *testing.T, opts Options) (*Worker, *memory.CheckedAllocator) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	opts.Allocator = mem
	w, err := NewWorker(testRegistry(t), opts)
	if err != nil {
		t.Fatalf("NewWorker: %v", err)
	}
	t.Cleanup(func() {
		w.Release()
		mem.AssertSize(t, 0)
	})
	return w, mem
}

// roundTrip processes lines with w and checks every valid one against the row it became: the row read back
// equals the source JSON (see jsonDiff). It flushes every flushEvery valid lines.
type roundTrip struct {
	t          *testing.T
	w          *Worker
	reg        *schema.Registry
	flushEvery int
	pending    map[string][][]byte // valid lines per type, in row order, not yet flushed
	npending   int
	lines      int
	valid      int
	rows       int
	rejected   map[string]int
	check      func(typ string, res *schema.Resource, rec arrow.Record, row int, src []byte)
}

func newRoundTrip(t *testing.T, w *Worker) *roundTrip {
	return &roundTrip{t: t, w: w, reg: testRegistry(t), flushEvery: 200, pending: map[string][][]byte{}, rejected: map[string]int{}}
}

func (r *roundTrip) line(where string, line []byte) {
	r.t.Helper()
	r.lines++
	res, err := r.w.Process(line)
	if err != nil {
		r.t.Fatalf("%s: internal error: %v", where, err)
	}
	if !res.Valid {
		r.rejected[res.ResourceType]++
		return
	}
	r.valid++
	r.pending[res.ResourceType] = append(r.pending[res.ResourceType], slices.Clone(line))
	if r.npending++; r.npending >= r.flushEvery {
		r.flush()
	}
}

func (r *roundTrip) flush() {
	r.t.Helper()
	recs, err := r.w.Flush(0)
	if err != nil {
		r.t.Fatalf("Flush: %v", err)
	}
	defer func() {
		for _, rec := range recs {
			rec.Release()
		}
	}()
	if len(recs) != len(r.pending) {
		r.t.Fatalf("Flush returned %d records for %d pending types", len(recs), len(r.pending))
	}
	for _, rec := range recs {
		typ, _ := rec.Schema().Metadata().GetValue(schema.MetaResourceType)
		res, ok := r.reg.Resource(typ)
		if !ok {
			r.t.Fatalf("record of unknown type %q", typ)
		}
		if !rec.Schema().Equal(res.Schema) {
			r.t.Fatalf("%s: record schema differs from the registry's", typ)
		}
		src := r.pending[typ]
		if int(rec.NumRows()) != len(src) {
			r.t.Fatalf("%s: record has %d rows, %d lines were valid", typ, rec.NumRows(), len(src))
		}
		for row, line := range src {
			r.rows++
			got, err := rowJSON(res, rec, row)
			if err != nil {
				r.t.Errorf("%s row %d: read back: %v", typ, row, err)
				continue
			}
			var want map[string]any
			if err := decodeJSON(line, &want); err != nil {
				r.t.Fatalf("%s row %d: decode source: %v", typ, row, err)
			}
			if d := jsonDiff(typ, want, got); d != "" {
				r.t.Errorf("%s id %v: row differs from source at %s", typ, want["id"], d)
			}
			if r.check != nil {
				r.check(typ, res, rec, row, line)
			}
		}
		delete(r.pending, typ)
	}
	r.npending = 0
}

func (r *roundTrip) file(path string, maxLines int) {
	r.t.Helper()
	f, err := os.Open(path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	n := 0
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		n++
		r.line(fmt.Sprintf("%s line %d", filepath.Base(path), n), sc.Bytes())
		if maxLines > 0 && n >= maxLines {
			break
		}
	}
	if err := sc.Err(); err != nil {
		r.t.Fatalf("read %s: %v", path, err)
	}
}

func TestWorkerHL7Examples(t *testing.T) {
	w, _ := newTestWorker(t, Options{})
	rt := newRoundTrip(t, w)
	rt.file("testdata/hl7-examples.ndjson", 0)
	rt.flush()
	if rt.valid != rt.lines || rt.rows != rt.lines {
		t.Errorf("%d lines, %d valid, %d rows; rejected %v", rt.lines, rt.valid, rt.rows, rt.rejected)
	}
}

// TestWorkerBigQueryReferences checks the derived referenceType/referenceId columns of the four HL7 examples
// against google/fhir's analytics goldens, which spell references as typed ids (subject.patientId) or fragments.
func TestWorkerBigQueryReferences(t *testing.T) {
	goldens, _ := filepath.Glob(filepath.Join(convertSharedData, "r4-bigquery", "*.analytics.json"))
	if len(goldens) == 0 {
		t.Skip("shared data absent")
	}
	reg := testRegistry(t)
	want := map[string]map[string][2]string{} // "Type/id" -> path -> (type, id)
	for _, g := range goldens {
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		typ := strings.SplitN(filepath.Base(g), "-", 2)[0]
		refs := map[string][2]string{}
		goldenRefs("", v, reg, refs)
		want[typ+"/"+v["id"].(string)] = refs
	}
	w, _ := newTestWorker(t, Options{})
	rt := newRoundTrip(t, w)
	seen := 0
	rt.check = func(typ string, res *schema.Resource, rec arrow.Record, row int, src []byte) {
		var hdr struct{ ID string }
		_ = json.Unmarshal(src, &hdr)
		exp, ok := want[typ+"/"+hdr.ID]
		if !ok {
			return
		}
		seen++
		got := map[string][2]string{}
		for i, n := range res.Fields {
			arrowRefs(n.Name, n, rec.Column(i), row, got)
		}
		for path, e := range exp {
			if got[path] != e {
				t.Errorf("%s/%s %s: referenceType, referenceId = %q, want %q", typ, hdr.ID, path, got[path], e)
			}
		}
		for path, g := range got {
			if _, ok := exp[path]; !ok {
				t.Errorf("%s/%s %s: derived %q, the golden has no typed reference there", typ, hdr.ID, path, g)
			}
		}
		if len(exp) == 0 {
			t.Errorf("%s/%s: golden has no references", typ, hdr.ID)
		}
	}
	rt.file("testdata/hl7-examples.ndjson", 0)
	rt.flush()
	if seen != len(want) {
		t.Errorf("checked %d of %d golden resources", seen, len(want))
	}
}

var typedID = regexp.MustCompile(`^([a-z][A-Za-z]*)Id$`)

// goldenRefs collects the references of an analytics golden: objects holding <type>Id or fragment.
func goldenRefs(path string, v any, reg *schema.Registry, out map[string][2]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if m := typedID.FindStringSubmatch(k); m != nil {
				typ := strings.ToUpper(m[1][:1]) + m[1][1:]
				if _, ok := reg.Resource(typ); ok {
					out[path] = [2]string{typ, c.(string)}
					continue
				}
			}
			if k == "fragment" {
				out[path] = [2]string{"", c.(string)}
				continue
			}
			p := k
			if path != "" {
				p = path + "." + k
			}
			goldenRefs(p, c, reg, out)
		}
	case []any:
		for i, c := range x {
			goldenRefs(fmt.Sprintf("%s[%d]", path, i), c, reg, out)
		}
	}
}

// arrowRefs collects the derived reference columns of a row, with paths spelled like the goldens
// (choice children as value.reference).
func arrowRefs(path string, n *schema.Node, col arrow.Array, row int, out map[string][2]string) {
	if !col.IsValid(row) || (n.Kind != schema.Struct && n.Kind != schema.Choice) {
		return
	}
	if n.Repeated {
		l := col.(*array.List)
		s, e := l.ValueOffsets(row)
		for k := int(s); k < int(e); k++ {
			item := *n
			item.Repeated = false
			arrowRefs(fmt.Sprintf("%s[%d]", path, k-int(s)), &item, l.ListValues(), k, out)
		}
		return
	}
	st := col.(*array.Struct)
	var typ, id string
	for j, c := range n.Children {
		switch c.Derived {
		case schema.ReferenceType, schema.ReferenceID:
			if f := st.Field(j); f.IsValid(row) {
				if c.Derived == schema.ReferenceType {
					typ = f.(*array.String).Value(row)
				} else {
					id = f.(*array.String).Value(row)
				}
			}
			continue
		}
		arrowRefs(path+"."+c.Name, c, st.Field(j), row, out)
	}
	if id != "" {
		out[path] = [2]string{typ, id}
	}
}

func TestWorkerInvalidLines(t *testing.T) {
	w, _ := newTestWorker(t, Options{})
	tests := []struct {
		name      string
		line      string
		wantType  string
		wantKnown bool
	}{
		{name: "malformed JSON", line: `{"resourceType":"Patient",`, wantType: ""},
		{name: "unknown type", line: `{"resourceType":"Spaceship","id":"x"}`, wantType: "Spaceship"},
		{name: "unknown element", line: `{"resourceType":"Patient","id":"x","hairColour":"red"}`, wantType: "Patient", wantKnown: true},
		{name: "bad code", line: `{"resourceType":"Patient","id":"x","gender":"sometimes"}`, wantType: "Patient", wantKnown: true},
		{name: "bad date", line: `{"resourceType":"Patient","id":"x","birthDate":"1974-13-45"}`, wantType: "Patient", wantKnown: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := w.Process([]byte(tt.line))
			if err != nil {
				t.Fatalf("Process: internal error %v", err)
			}
			if res.Valid || len(res.Issues) == 0 {
				t.Errorf("Valid = %v with %d issues, want invalid", res.Valid, len(res.Issues))
			}
			if res.ResourceType != tt.wantType || res.Known != tt.wantKnown {
				t.Errorf("ResourceType, Known = %q, %v; want %q, %v", res.ResourceType, res.Known, tt.wantType, tt.wantKnown)
			}
		})
	}
	if n := w.Pending(); n != 0 {
		t.Errorf("Pending() = %d after invalid lines only", n)
	}
	recs, err := w.Flush(0)
	if err != nil || len(recs) != 0 {
		t.Errorf("Flush(0) = %d records, %v; want none", len(recs), err)
	}
}

func TestWorkerFlush(t *testing.T) {
	w, _ := newTestWorker(t, Options{BatchRows: 3})
	patient := func(id string) []byte {
		return []byte(`{"resourceType":"Patient","id":"` + id + `","birthDate":"1970"}`)
	}
	obs := func(id string) []byte {
		return []byte(`{"resourceType":"Observation","id":"` + id + `","status":"final","code":{"text":"t"},"valueInteger":1}`)
	}
	for i, line := range [][]byte{patient("a"), obs("1"), patient("b"), obs("2")} {
		res, err := w.Process(line)
		if err != nil || !res.Valid {
			t.Fatalf("line %d: Valid %v, issues %v, err %v", i, res.Valid, res.Issues, err)
		}
		if res.ID == "" {
			t.Errorf("line %d: no ID in result", i)
		}
	}
	if w.Full() {
		t.Errorf("Full() with 2 rows per type and BatchRows 3")
	}
	if _, err := w.Process(patient("c")); err != nil {
		t.Fatal(err)
	}
	if !w.Full() || w.Pending() != 5 {
		t.Errorf("Full, Pending = %v, %d; want true, 5", w.Full(), w.Pending())
	}
	type want struct {
		typ  string
		rows int64
	}
	steps := []struct {
		name    string
		minRows int
		want    []want
	}{
		{name: "only full types", minRows: 3, want: []want{{"Patient", 3}}},
		{name: "the rest", minRows: 0, want: []want{{"Observation", 2}}},
		{name: "nothing left", minRows: 0},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			recs, err := w.Flush(st.minRows)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, r := range recs {
					r.Release()
				}
			}()
			var got []want
			for _, r := range recs {
				typ, _ := r.Schema().Metadata().GetValue(schema.MetaResourceType)
				got = append(got, want{typ, r.NumRows()})
				res, _ := testRegistry(t).Resource(typ)
				if !r.Schema().Equal(res.Schema) {
					t.Errorf("%s record schema is not the registry's", typ)
				}
			}
			if !slices.Equal(got, st.want) {
				t.Errorf("Flush(%d) = %v, want %v", st.minRows, got, st.want)
			}
		})
	}
}

// TestWorkerFlushType flushes one type at a time, as pipeline's writer does: the type's pending rows, then an
// empty record, and an error for a type the Worker has no batch of (nothing is lost or made up).
func TestWorkerFlushType(t *testing.T) {
	w, _ := newTestWorker(t, Options{})
	for _, line := range []string{
		`{"resourceType":"Patient","id":"a"}`,
		`{"resourceType":"Patient","id":"b"}`,
		`{"resourceType":"Organization","id":"o"}`,
	} {
		if res, err := w.Process([]byte(line)); err != nil || !res.Valid {
			t.Fatalf("%s: Valid %v, issues %v, err %v", line, res.Valid, res.Issues, err)
		}
	}
	for _, st := range []struct {
		typ  string
		rows int64
	}{{"Patient", 2}, {"Patient", 0}, {"Organization", 1}} {
		rec, err := w.FlushType(st.typ)
		if err != nil {
			t.Fatalf("FlushType(%s): %v", st.typ, err)
		}
		if typ, _ := rec.Schema().Metadata().GetValue(schema.MetaResourceType); typ != st.typ || rec.NumRows() != st.rows {
			t.Errorf("FlushType(%s) = %s with %d rows, want %d rows", st.typ, typ, rec.NumRows(), st.rows)
		}
		rec.Release()
	}
	if rec, err := w.FlushType("Observation"); err == nil {
		rec.Release()
		t.Error("FlushType(Observation), a type the Worker never had a row of: no error")
	}
	if w.Pending() != 0 {
		t.Errorf("Pending() = %d after flushing every type", w.Pending())
	}
}

// TestWorkerByReference checks Result.ByReference: unset for a line the fast validator vouches for, set for one
// it hands on (valid in a shape it does not model, or invalid) and for every line on the reference path.
func TestWorkerByReference(t *testing.T) {
	for _, tt := range []struct {
		validator, line string
		valid, byRef    bool
	}{
		{ValidatorFast, `{"resourceType":"Patient","active":true}`, true, false},
		{ValidatorFast, `{"resourceType":"Patient","\u0061ctive":true}`, true, true},
		{ValidatorFast, `{"resourceType":"Patient","birthDate":"1970-13-45"}`, false, true},
		{ValidatorReference, `{"resourceType":"Patient","active":true}`, true, true},
	} {
		w, _ := newTestWorker(t, Options{Validator: tt.validator})
		res, err := w.Process([]byte(tt.line))
		if err != nil || res.Valid != tt.valid || res.ByReference != tt.byRef {
			t.Errorf("%s %s: Valid %v, ByReference %v, err %v; want %v, %v", tt.validator, tt.line, res.Valid, res.ByReference, err, tt.valid, tt.byRef)
		}
	}
}

// TestWorkerFlushLargest fills batches of three types of very different sizes and checks that FlushLargest takes
// the types holding the most memory, and only as many as it must to get under what it may keep.
func TestWorkerFlushLargest(t *testing.T) {
	w, _ := newTestWorker(t, Options{})
	text := strings.Repeat("x", 4000)
	lines := map[string]string{
		"Observation": `{"resourceType":"Observation","id":"o%d","status":"final","code":{"text":"` + text + `"}}`,
		"Patient":     `{"resourceType":"Patient","id":"p%d","gender":"` + "male" + `","birthDate":"1970"}`,
		"Condition":   `{"resourceType":"Condition","id":"c%d","subject":{"reference":"Patient/p1"},"note":[{"text":"` + text[:400] + `"}]}`,
	}
	for i := range 200 {
		for typ, l := range lines {
			if typ == "Patient" && i >= 20 {
				continue
			}
			if res, err := w.Process([]byte(fmt.Sprintf(l, i))); err != nil || !res.Valid {
				t.Fatalf("%s %d: valid %v, %v, %v", typ, i, res.Valid, res.Issues, err)
			}
		}
	}
	held := func(typ string) int64 { return w.tables[typ].mem.held }
	obs, cond, pat := held("Observation"), held("Condition"), held("Patient")
	if !(obs > cond && cond > pat && pat > 0) {
		t.Fatalf("held: Observation %d, Condition %d, Patient %d; the test wants them in this order", obs, cond, pat)
	}
	flushed := func(keep int64) []string {
		t.Helper()
		recs, err := w.FlushLargest(keep)
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, r := range recs {
			typ, _ := r.Schema().Metadata().GetValue(schema.MetaResourceType)
			types = append(types, typ)
			r.Release()
		}
		return types
	}
	if got := flushed(w.PendingBytes()); len(got) != 0 {
		t.Errorf("FlushLargest(what is pending) flushed %v, want nothing", got)
	}
	if got := flushed(cond + pat); !slices.Equal(got, []string{"Observation"}) {
		t.Errorf("FlushLargest(Condition's and Patient's bytes) = %v, want [Observation]", got)
	}
	if w.Pending() != 220 {
		t.Errorf("%d rows pending, want Condition's 200 and Patient's 20", w.Pending())
	}
	if got := flushed(0); !slices.Equal(got, []string{"Condition", "Patient"}) {
		t.Errorf("FlushLargest(0) = %v, want [Condition Patient] (in type order)", got)
	}
	if w.Pending() != 0 || w.PendingBytes() != 0 {
		t.Errorf("after FlushLargest(0): %d rows, %d bytes pending", w.Pending(), w.PendingBytes())
	}
}

func TestNewWorkerOptions(t *testing.T) {
	if _, err := NewWorker(nil, Options{}); err == nil {
		t.Error("NewWorker(nil registry): no error")
	}
	if _, err := NewWorker(testRegistry(t), Options{BatchRows: -1}); err == nil {
		t.Error("NewWorker(BatchRows -1): no error")
	}
}

// validators runs f once per validation path: the fast path converts from the tree its validator built, the
// reference path from a tree of its own.
func validators(t *testing.T, f func(t *testing.T, validator string)) {
	for _, v := range []string{ValidatorReference, ValidatorFast} {
		t.Run(v, func(t *testing.T) { f(t, v) })
	}
}

// convertFiles converts files through a new Worker on validator, under -short at most shortLines lines of each
// (0: all), flushing every flushEvery valid lines, and returns the round trip, each row read back as its source.
func convertFiles(t *testing.T, validator string, files []string, shortLines, flushEvery int) *roundTrip {
	t.Helper()
	w, _ := newTestWorker(t, Options{Validator: validator})
	rt := newRoundTrip(t, w)
	rt.flushEvery = flushEvery
	maxLines := 0
	if testing.Short() {
		maxLines = shortLines
	}
	for _, f := range files {
		rt.file(f, maxLines)
	}
	rt.flush()
	return rt
}

func TestWorkerSyntheaExcerpt(t *testing.T) {
	validators(t, func(t *testing.T, validator string) {
		rt := convertFiles(t, validator, []string{"testdata/synthea-excerpt.ndjson"}, 0, 200)
		if rt.lines != 38 || rt.valid != rt.lines || rt.rows != rt.lines {
			t.Errorf("%d lines, %d valid, %d rows; rejected %v", rt.lines, rt.valid, rt.rows, rt.rejected)
		}
	})
}

func sharedFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(convertSharedData, dir, "*.ndjson"))
	if len(files) == 0 {
		t.Skipf("%s absent", filepath.Join(convertSharedData, dir))
	}
	return files
}

// TestWorkerSynthea100 converts every line of the synthea-100 export: 38,483 valid resources, and every row
// reads back as its source.
func TestWorkerSynthea100(t *testing.T) {
	files := sharedFiles(t, "synthea-100")
	validators(t, func(t *testing.T, validator string) {
		rt := convertFiles(t, validator, files, 50, 200)
		if len(rt.rejected) != 0 {
			t.Errorf("rejected %v, want none", rt.rejected)
		}
		if !testing.Short() && rt.rows != 38483 {
			t.Errorf("%d rows, want 38483", rt.rows)
		}
		t.Logf("synthea-100: %d lines, %d rows", rt.lines, rt.rows)
	})
}

// TestWorkerR4Examples converts every valid HL7 R4 example (the reference validator rejects 17 of the 5,297),
// lines up to 2.75 MB included, and reads each row back as its source.
func TestWorkerR4Examples(t *testing.T) {
	files := sharedFiles(t, "r4-examples")
	validators(t, func(t *testing.T, validator string) {
		rt := convertFiles(t, validator, files, 3, 100)
		rejected := 0
		for _, n := range rt.rejected {
			rejected += n
		}
		if rt.rows != rt.valid || rt.valid+rejected != rt.lines {
			t.Errorf("%d lines, %d valid, %d rows, %d rejected", rt.lines, rt.valid, rt.rows, rejected)
		}
		if !testing.Short() && rt.lines != 5297 {
			t.Errorf("%d lines, want 5297", rt.lines)
		}
		t.Logf("r4-examples: %d lines, %d rows, rejected %v", rt.lines, rt.rows, rt.rejected)
	})
}

func TestWorkerBytes(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	w, err := NewWorker(testRegistry(t), Options{BatchBytes: 1 << 20, Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	if w.Full() || w.Bytes() != 0 {
		t.Fatalf("new worker: Full %v, Bytes %d", w.Full(), w.Bytes())
	}
	line := []byte(`{"resourceType":"ExplanationOfBenefit","id":"e","status":"active","type":{"text":"t"},"use":"claim",` +
		`"patient":{"reference":"Patient/p"},"created":"2020","insurer":{"reference":"Organization/o"},` +
		`"provider":{"reference":"Organization/o"},"outcome":"complete",` +
		`"insurance":[{"focal":true,"coverage":{"reference":"Coverage/c"}}]}`)
	rows := 0
	for !w.Full() {
		res, err := w.Process(line)
		if err != nil || !res.Valid {
			t.Fatalf("Process: valid %v, issues %v, err %v", res.Valid, res.Issues, err)
		}
		if rows++; rows > 100000 {
			t.Fatal("never Full")
		}
	}
	if w.Bytes() < 1<<20 || w.Bytes() != int64(mem.CurrentAlloc()) {
		t.Errorf("Bytes() = %d, allocator holds %d, BatchBytes 1 MiB", w.Bytes(), mem.CurrentAlloc())
	}
	recs, err := w.Flush(0)
	if err != nil || len(recs) != 1 || recs[0].NumRows() != int64(rows) {
		t.Fatalf("Flush(0): %d records, %v; want 1 of %d rows", len(recs), err, rows)
	}
	// A flushed record still held (by a Parquet table gathering a row group) is not pending: Full says false,
	// while Bytes still counts it.
	if w.Full() || w.Bytes() < 1<<20 {
		t.Errorf("after Flush, record held: Full %v, Bytes %d; want false and >= 1 MiB", w.Full(), w.Bytes())
	}
	recs[0].Release()
	if w.Full() {
		t.Errorf("Full after flushing and releasing: Bytes %d", w.Bytes())
	}
	w.Release()
	if w.Bytes() != 0 {
		t.Errorf("Bytes() = %d after Release", w.Bytes())
	}
}

func TestWorkerShedsScratch(t *testing.T) {
	for _, validator := range []string{ValidatorFast, ValidatorReference} {
		t.Run(validator, func(t *testing.T) {
			w, _ := newTestWorker(t, Options{Validator: validator})
			// 100,000 given names: a line of 400 KB whose tree has 2 MB of nodes.
			big := []byte(`{"resourceType":"Patient","id":"big","name":[{"given":["a"` +
				strings.Repeat(`,"a"`, 99_999) + `]}]}`)
			small := []byte(`{"resourceType":"Patient","id":"small"}`)
			held := func() int {
				n := cap(w.conv.tree.nodes) * int(unsafe.Sizeof(jnode{}))
				if w.fast != nil {
					n = max(n, cap(w.fast.scratch), cap(w.fast.b64))
				}
				return n
			}
			for i, step := range []struct {
				line     []byte
				wantMore bool // scratch over keepScratchBytes after the line
			}{{big, true}, {big, true}, {small, false}, {small, false}, {big, true}} {
				if res, err := w.Process(step.line); err != nil || !res.Valid {
					t.Fatalf("line %d: Valid %v, issues %v, err %v", i, res.Valid, res.Issues, err)
				}
				if got := held() > keepScratchBytes; got != step.wantMore {
					t.Errorf("after line %d (%d bytes) the largest scratch holds %d bytes; over %d: %v, want %v",
						i, len(step.line), held(), keepScratchBytes, got, step.wantMore)
				}
			}
			recs := flushed(t, w)
			if len(recs) != 1 || recs[0].NumRows() != 5 {
				t.Fatalf("Flush: %d records, want one of 5 rows", len(recs))
			}
			ids := recs[0].Column(recs[0].Schema().FieldIndices("id")[0]).(*array.String)
			for i, want := range []string{"big", "big", "small", "small", "big"} {
				if ids.Value(i) != want {
					t.Errorf("row %d: id %q, want %q", i, ids.Value(i), want)
				}
			}
		})
	}
}

// flushed returns the records of every pending batch of w (Flush(0)), released when the test ends.
func flushed(t testing.TB, w *Worker) []arrow.Record {
	t.Helper()
	recs, err := w.Flush(0)
	if err != nil {
		t.Fatalf("Flush(0): %v", err)
	}
	t.Cleanup(func() {
		for _, r := range recs {
			r.Release()
		}
	})
	return recs
}

// TestWorkerRetireIdle: RetireIdle lets go of the types without pending rows that have had no row in the last
// idle rows, keeps the others, and a retired type converts again into the same schema.
func TestWorkerRetireIdle(t *testing.T) {
	w, _ := newTestWorker(t, Options{})
	process := func(lines ...string) {
		t.Helper()
		for _, line := range lines {
			if res, err := w.Process([]byte(line)); err != nil || !res.Valid {
				t.Fatalf("%s: Valid %v, issues %v, err %v", line, res.Valid, res.Issues, err)
			}
		}
	}
	flush := func(typ string, rows int64) *arrow.Schema {
		t.Helper()
		rec, err := w.FlushType(typ)
		if err != nil {
			t.Fatalf("FlushType(%s): %v", typ, err)
		}
		defer rec.Release()
		if rec.NumRows() != rows {
			t.Errorf("FlushType(%s): %d rows, want %d", typ, rec.NumRows(), rows)
		}
		return rec.Schema()
	}
	process(`{"resourceType":"Patient","id":"a"}`, `{"resourceType":"Organization","id":"o"}`)
	patient := flush("Patient", 1)
	process(`{"resourceType":"Device","id":"d1"}`, `{"resourceType":"Device","id":"d2"}`)
	flush("Device", 2)

	// Patient: flushed, 3 rows ago. Organization: a pending row. Device: flushed, its last row just now.
	if got := w.RetireIdle(4); len(got) != 0 {
		t.Errorf("RetireIdle(4) = %v: no type has been idle for 4 rows", got)
	}
	if got := w.RetireIdle(3); !slices.Equal(got, []string{"Patient"}) {
		t.Errorf("RetireIdle(3) = %v, want [Patient]: Organization has a pending row, Device was just used", got)
	}
	if rec, err := w.FlushType("Patient"); err == nil {
		rec.Release()
		t.Error("FlushType(Patient) after it was retired: no error")
	}
	if w.Pending() != 1 {
		t.Errorf("Pending() = %d, want Organization's row", w.Pending())
	}
	if got := w.RetireIdle(0); !slices.Equal(got, []string{"Device"}) {
		t.Errorf("RetireIdle(0) = %v, want [Device]", got)
	}

	process(`{"resourceType":"Patient","id":"b","active":true}`)
	if again := flush("Patient", 1); !again.Equal(patient) {
		t.Error("a retired Patient converts again into another schema")
	}
	flush("Organization", 1)
}
