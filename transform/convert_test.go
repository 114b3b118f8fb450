package transform

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/fhirlake/fhirlake/schema"
)

var (
	regOnce sync.Once
	regVal  *schema.Registry
	regErr  error
)

// testRegistry builds the default registry once for the package's tests.
func testRegistry(t testing.TB) *schema.Registry {
	t.Helper()
	regOnce.Do(func() { regVal, regErr = schema.New(schema.Options{}) })
	if regErr != nil {
		t.Fatalf("schema.New: %v", regErr)
	}
	return regVal
}

func isR4Type(s string) bool {
	switch s {
	case "Patient", "Practitioner", "Organization", "Observation", "Location":
		return true
	}
	return false
}

// parseReferenceByScans is parseReference as it was before its one pass: separate scans for a query or
// fragment and, backwards, for each slash. TestParseReferenceOnePass holds the two to the same answers.
func parseReferenceByScans(ref, typeElem []byte, isType func([]byte) bool) (typ, id []byte) {
	switch {
	case len(ref) == 0:
		return nil, nil
	case ref[0] == '#':
		return nil, ref[1:]
	case bytes.HasPrefix(ref, []byte("urn:uuid:")):
		return typeElem, ref[len("urn:uuid:"):]
	case bytes.HasPrefix(ref, []byte("urn:oid:")):
		return typeElem, ref[len("urn:oid:"):]
	case bytes.IndexByte(ref, '?') >= 0 || bytes.IndexByte(ref, '#') >= 0:
		return nil, nil
	}
	s := ref
	if i := bytes.LastIndexByte(s, '/'); i >= 0 {
		if j := bytes.LastIndexByte(s[:i], '/'); j >= 0 && string(s[j+1:i]) == "_history" && bytes.IndexByte(s[:j], '/') >= 0 {
			s = s[:j]
		}
	}
	i := bytes.LastIndexByte(s, '/')
	if i < 0 || i == len(s)-1 {
		return nil, nil
	}
	t := s[bytes.LastIndexByte(s[:i], '/')+1 : i]
	if !isType(t) {
		return nil, nil
	}
	return t, s[i+1:]
}

// TestParseReferenceOnePass compares parseReference with the scans it replaced on every reference of up to five
// pieces drawn from types, ids, slashes, _history, queries, fragments and URL prefixes.
func TestParseReferenceOnePass(t *testing.T) {
	pieces := []string{"Patient", "Foo", "_history", "1", "/", "/", "?", "#", "http://x.org", "urn:uuid:", "a=b", ""}
	isType := func(b []byte) bool { return isR4Type(string(b)) }
	var build func(prefix string, depth int)
	n, typed := 0, 0
	build = func(prefix string, depth int) {
		for _, te := range []string{"", "Patient"} {
			gt, gi := parseReference([]byte(prefix), []byte(te), isType)
			wt, wi := parseReferenceByScans([]byte(prefix), []byte(te), isType)
			if string(gt) != string(wt) || string(gi) != string(wi) || (gt == nil) != (wt == nil) {
				t.Fatalf("parseReference(%q, %q) = %q, %q; the scans give %q, %q", prefix, te, gt, gi, wt, wi)
			}
			n++
			if len(gt) > 0 {
				typed++
			}
		}
		if depth == 5 {
			return
		}
		for _, p := range pieces {
			build(prefix+p, depth+1)
		}
	}
	build("", 0)
	if typed == 0 {
		t.Fatalf("none of %d references gave a type", n)
	}
	t.Logf("%d references compared, %d with a type", n, typed)
}

func TestParseReference(t *testing.T) {
	tests := []struct {
		name, ref, typeElem string
		wantType, wantID    string
	}{
		{name: "relative", ref: "Patient/123", wantType: "Patient", wantID: "123"},
		{name: "versioned", ref: "Patient/123/_history/2", wantType: "Patient", wantID: "123"},
		{name: "absolute", ref: "http://example.org/fhir/Observation/abc.1", wantType: "Observation", wantID: "abc.1"},
		{name: "absolute versioned", ref: "https://x.org/r4/Organization/o1/_history/7", wantType: "Organization", wantID: "o1"},
		{name: "urn uuid with type", ref: "urn:uuid:0b5b-11", typeElem: "Practitioner", wantType: "Practitioner", wantID: "0b5b-11"},
		{name: "urn uuid without type", ref: "urn:uuid:0b5b-11", wantID: "0b5b-11"},
		{name: "urn oid", ref: "urn:oid:1.2.3", wantID: "1.2.3"},
		{name: "fragment", ref: "#p1", wantID: "p1"},
		{name: "fragment ignores type", ref: "#p1", typeElem: "Patient", wantID: "p1"},
		{name: "bare hash", ref: "#"},
		{name: "unknown type", ref: "Foo/1"},
		{name: "conditional", ref: "Patient?identifier=x|1"},
		{name: "trailing slash", ref: "Patient/"},
		{name: "single segment", ref: "Patient"},
		{name: "empty", ref: ""},
		{name: "type element alone", typeElem: "Patient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, id := parseReference([]byte(tt.ref), []byte(tt.typeElem), func(b []byte) bool { return isR4Type(string(b)) })
			gotType, gotID := string(typ), string(id)
			if gotType != tt.wantType || gotID != tt.wantID {
				t.Errorf("parseReference(%q, %q) = %q, %q; want %q, %q", tt.ref, tt.typeElem, gotType, gotID, tt.wantType, tt.wantID)
			}
		})
	}
}

func TestParseInstant(t *testing.T) {
	tests := []struct {
		name, in string
		want     time.Time
		wantErr  bool
	}{
		{name: "offset", in: "2013-04-03T15:30:10+01:00", want: time.Date(2013, 4, 3, 14, 30, 10, 0, time.UTC)},
		{name: "zulu fraction", in: "2015-02-07T13:28:17.239Z", want: time.Date(2015, 2, 7, 13, 28, 17, 239e6, time.UTC)},
		{name: "nanoseconds truncate to micro", in: "2015-02-07T13:28:17.123456789Z", want: time.Date(2015, 2, 7, 13, 28, 17, 123456e3, time.UTC)},
		{name: "leap second", in: "2016-12-31T23:59:60Z", want: time.Date(2017, 1, 1, 0, 0, 0, 0, time.UTC)},
		{name: "date only", in: "2015-02-07", wantErr: true},
		{name: "no zone", in: "2015-02-07T13:28:17", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseInstant([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseInstant(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got != arrow.Timestamp(tt.want.UnixMicro()) {
				t.Errorf("parseInstant(%q) = %d, want %d", tt.in, got, tt.want.UnixMicro())
			}
		})
	}
}

func TestDecodeBase64(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{name: "padded", in: "aGVsbG8=", want: "hello"},
		{name: "whitespace", in: "aGVs\n bG8=", want: "hello"},
		{name: "unpadded", in: "aGVsbG8", want: "hello"},
		{name: "empty", in: "", want: ""},
		{name: "bad", in: "a$b=", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeBase64(nil, []byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("decodeBase64(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err == nil && string(got) != tt.want {
				t.Errorf("decodeBase64(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseNumbers(t *testing.T) {
	ints := []struct {
		name, in string
		want     int64
		wantErr  bool
	}{
		{name: "plain", in: "42", want: 42},
		{name: "negative", in: "-7", want: -7},
		{name: "beyond int32", in: "4294967295", want: 4294967295},
		{name: "integral decimal", in: "3.0", want: 3},
		{name: "fraction", in: "3.5", wantErr: true},
	}
	for _, tt := range ints {
		t.Run("int "+tt.name, func(t *testing.T) {
			got, err := parseInteger([]byte(tt.in))
			if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
				t.Errorf("parseInteger(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
	decs := []struct {
		name, in string
		want     float64
		wantErr  bool
	}{
		{name: "plain", in: "1.50", want: 1.5},
		{name: "exponent", in: "1e-3", want: 0.001},
		{name: "garbage", in: "1.2.3", wantErr: true},
	}
	for _, tt := range decs {
		t.Run("decimal "+tt.name, func(t *testing.T) {
			got, err := parseDecimal([]byte(tt.in))
			if (err != nil) != tt.wantErr || (err == nil && got != tt.want) {
				t.Errorf("parseDecimal(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestJTree(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{name: "object", in: `{"a":[1,-2.5e3,true,false,null,"x\"y"],"b":{}}`},
		{name: "whitespace", in: " { \"a\" : [ ] } "},
		{name: "truncated", in: `{"a":[1,2`, wantErr: true},
		{name: "trailing garbage", in: `{"a":1}x`, wantErr: true},
		{name: "missing colon", in: `{"a" 1}`, wantErr: true},
		{name: "bare key", in: `{a:1}`, wantErr: true},
		{name: "bad literal", in: `{"a":tru}`, wantErr: true},
		{name: "control char in string", in: "{\"a\":\"x\ty\"}", wantErr: true},
		{name: "unterminated string", in: `{"a":"x`, wantErr: true},
		{name: "too deep", in: strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1), wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	var tr jtree
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := tr.parse([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parse error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := string(tr.raw(root)); got != strings.TrimSpace(tt.in) {
				t.Errorf("root span = %q", got)
			}
		})
	}
	root, err := tr.parse([]byte(`{"k\u0041":"v\n","n":[1,{"x":null}]}`))
	if err != nil {
		t.Fatal(err)
	}
	kids := tr.children(root)
	if len(kids) != 4 {
		t.Fatalf("root has %d children, want 4 (2 members)", len(kids))
	}
	if k, _ := tr.text(kids[0]); string(k) != "kA" {
		t.Errorf("unescaped key = %q, want kA", k)
	}
	if v, _ := tr.text(kids[1]); string(v) != "v\n" {
		t.Errorf("unescaped value = %q", v)
	}
	if arr := tr.children(kids[3]); len(arr) != 2 || string(tr.raw(arr[1])) != `{"x":null}` {
		t.Errorf("array children wrong: %d", len(arr))
	}
}

// newTestTable binds the columns of typ the way a Worker does, for tests that call the converter directly
// (without the Validator).
func newTestTable(t *testing.T, mem memory.Allocator, typ string) (*converter, *table) {
	t.Helper()
	reg := testRegistry(t)
	res, ok := reg.Resource(typ)
	if !ok {
		t.Fatalf("no resource %s", typ)
	}
	p := newRootPlan(res, &arena{mem: mem})
	t.Cleanup(p.release)
	c := &converter{isType: typeSet(reg)}
	return c, &table{res: res, plan: p}
}

// convertRow converts line as the table's first row and returns its record (released when the test ends, before
// the allocator's check) and the row read back as JSON.
func convertRow(t *testing.T, c *converter, tab *table, mem memory.Allocator, line string) (arrow.Record, map[string]any) {
	t.Helper()
	if err := c.convert(tab, []byte(line)); err != nil {
		t.Fatalf("convert: %v", err)
	}
	rec := tab.record(mem)
	t.Cleanup(rec.Release)
	got, err := rowJSON(tab.res, rec, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rec, got
}

// TestConvertAtomic feeds shapes the Validator would reject straight to the converter: each must fail naming the
// element path, without the value, and leave no partial row.
func TestConvertAtomic(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) }) // after the plan's release, which newTestTable registers
	c, tab := newTestTable(t, mem, "Patient")
	good := `{"resourceType":"Patient","id":"p1","name":[{"family":"Chalmers","given":["Peter"]}]}`
	tests := []struct {
		name     string
		line     string
		wantPath string
	}{
		{name: "late wrong primitive", line: `{"resourceType":"Patient","id":"p2","name":[{"family":"SecretName"}],"birthDate":19741225}`, wantPath: "Patient.birthDate"},
		{name: "wrong type in list", line: `{"resourceType":"Patient","name":[{"given":["Ok",7]}]}`, wantPath: "Patient.name.given"},
		{name: "single where array", line: `{"resourceType":"Patient","name":{"family":"SecretName"}}`, wantPath: "Patient.name"},
		{name: "unknown element", line: `{"resourceType":"Patient","active":true,"hairColour":"SecretValue"}`, wantPath: "Patient"},
		{name: "bad instant", line: `{"resourceType":"Patient","meta":{"lastUpdated":"SecretValue"}}`, wantPath: "Patient.meta.lastUpdated"},
		{name: "bad boolean in choice", line: `{"resourceType":"Patient","deceasedBoolean":"SecretValue"}`, wantPath: "Patient.deceasedBoolean"},
		{name: "bad base64", line: `{"resourceType":"Patient","photo":[{"data":"Secret$Value"}]}`, wantPath: "Patient.photo.data"},
		{name: "malformed", line: `{"resourceType":"Patient","id":"SecretValue"`, wantPath: "Patient"},
	}
	if err := c.convert(tab, []byte(good)); err != nil {
		t.Fatalf("convert good line: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.convert(tab, []byte(tt.line))
			if err == nil {
				t.Fatal("convert: no error")
			}
			if !strings.Contains(err.Error(), tt.wantPath) {
				t.Errorf("error %q does not name %s", err, tt.wantPath)
			}
			if strings.Contains(err.Error(), "Secret") || strings.Contains(err.Error(), "1974") {
				t.Errorf("error %q holds a value", err)
			}
			if tab.rowsMisaligned() {
				t.Errorf("a failed row left values behind")
			}
		})
	}
	if err := c.convert(tab, []byte(good)); err != nil {
		t.Fatalf("convert good line after failures: %v", err)
	}
	rec := tab.record(mem)
	defer rec.Release()
	if rec.NumRows() != 2 {
		t.Fatalf("record has %d rows, want 2", rec.NumRows())
	}
	for row := 0; row < 2; row++ {
		got, err := rowJSON(tab.res, rec, row)
		if err != nil {
			t.Fatal(err)
		}
		var src map[string]any
		if err := decodeJSON([]byte(good), &src); err != nil {
			t.Fatal(err)
		}
		if d := jsonDiff("Patient", src, got); d != "" {
			t.Errorf("row %d: %s", row, d)
		}
	}
}

func TestConvertValues(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) }) // after the plan's release, which newTestTable registers
	c, tab := newTestTable(t, mem, "Observation")
	line := `{"resourceType":"Observation","id":"o1","meta":{"lastUpdated":"2020-01-02T03:04:05.678+02:00"},` +
		`"status":"final","_status":{"extension":[{"url":"http://x/e","valueString":"s"}]},` +
		`"code":{"coding":[{"system":"http://loinc.org","code":"1-8"}],"text":"caf\u00e9 \"x\""},` +
		`"subject":{"reference":"Patient/p1/_history/3","display":"P"},` +
		`"performer":[{"reference":"urn:uuid:abc","type":"Practitioner"},{"reference":"#c1"},{"identifier":{"value":"9"}}],` +
		`"effectiveDateTime":"2020-01",` +
		`"valueQuantity":{"value":1.50,"unit":"mg","_code":{"id":"q"}},` +
		`"component":[{"code":{"text":"a"},"valueString":"x","_valueString":{"id":"v"}},{"code":{"text":"b"},"valueInteger":3}],` +
		`"extension":[{"url":"http://x/y","valueDecimal":1.000}],` +
		`"contained":[{"resourceType":"Patient","id":"c1","birthDate":"2000"}]}`
	rec, got := convertRow(t, c, tab, mem, line)
	var src map[string]any
	if err := decodeJSON([]byte(line), &src); err != nil {
		t.Fatal(err)
	}
	if d := jsonDiff("Observation", src, got); d != "" {
		t.Errorf("round trip: %s", d)
	}
	col := func(name string) arrow.Array {
		for i, f := range rec.Schema().Fields() {
			if f.Name == name {
				return rec.Column(i)
			}
		}
		t.Fatalf("no column %s", name)
		return nil
	}
	field := func(a arrow.Array, name string) arrow.Array {
		st := a.(*array.Struct)
		for i, f := range st.DataType().(*arrow.StructType).Fields() {
			if f.Name == name {
				return st.Field(i)
			}
		}
		t.Fatalf("no field %s", name)
		return nil
	}
	str := func(a arrow.Array, i int) string {
		if a.IsNull(i) {
			return "<null>"
		}
		return a.(*array.String).Value(i)
	}
	subject := col("subject")
	if g := str(field(subject, "reference"), 0); g != "Patient/p1/_history/3" {
		t.Errorf("subject.reference = %q", g)
	}
	if g, h := str(field(subject, "referenceType"), 0), str(field(subject, "referenceId"), 0); g != "Patient" || h != "p1" {
		t.Errorf("subject referenceType, referenceId = %q, %q", g, h)
	}
	perf := col("performer").(*array.List).ListValues()
	wantPerf := [][2]string{{"Practitioner", "abc"}, {"<null>", "c1"}, {"<null>", "<null>"}}
	for i, w := range wantPerf {
		if g, h := str(field(perf, "referenceType"), i), str(field(perf, "referenceId"), i); g != w[0] || h != w[1] {
			t.Errorf("performer[%d] referenceType, referenceId = %q, %q; want %q, %q", i, g, h, w[0], w[1])
		}
	}
	if g := str(field(col("effective"), "dateTime"), 0); g != "2020-01" {
		t.Errorf("effective.dateTime = %q, want verbatim 2020-01", g)
	}
	if g := field(field(col("value"), "quantity"), "value").(*array.Float64).Value(0); g != 1.5 {
		t.Errorf("value.quantity.value = %v", g)
	}
	if g := col("meta").(*array.Struct).Field(3).(*array.Timestamp).Value(0); g != arrow.Timestamp(time.Date(2020, 1, 2, 1, 4, 5, 678e6, time.UTC).UnixMicro()) {
		t.Errorf("meta.lastUpdated = %v", g)
	}
	if g := str(field(col("code"), "text"), 0); g != `café "x"` {
		t.Errorf("code.text = %q", g)
	}
	wantPE := `{"status":{"extension":[{"url":"http://x/e","valueString":"s"}]},"valueQuantity.code":{"id":"q"},"component[0].valueString":{"id":"v"}}`
	if g := str(col(schema.PrimitiveExtensionsColumn), 0); g != wantPE {
		t.Errorf("_primitiveExtensions = %s\nwant %s", g, wantPE)
	}
	ext := col("extension").(*array.List).ListValues()
	if g := str(ext, 0); g != `{"url":"http://x/y","valueDecimal":1.000}` {
		t.Errorf("extension[0] = %s, want the original JSON", g)
	}
	if g := str(col("contained").(*array.List).ListValues(), 0); g != `{"resourceType":"Patient","id":"c1","birthDate":"2000"}` {
		t.Errorf("contained[0] = %s", g)
	}
}

// TestConvertRepeatedKey: the Validator rejects an object that gives a key twice, but the converter on its own
// keeps the last value given for an element, whichever of a choice's keys it came under, and derives a
// Reference's columns from the last "reference".
func TestConvertRepeatedKey(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	c, tab := newTestTable(t, mem, "Observation")
	line := `{"resourceType":"Observation","subject":{"reference":"Patient/p1","type":"Group","reference":"Patient/p2"},` +
		`"status":"preliminary","code":{"text":"a"},"valueString":"x","status":"final","valueInteger":3}`
	rec, got := convertRow(t, c, tab, mem, line)
	var want map[string]any
	last := `{"resourceType":"Observation","subject":{"type":"Group","reference":"Patient/p2"},"status":"final",` +
		`"code":{"text":"a"},"valueInteger":3}`
	if err := decodeJSON([]byte(last), &want); err != nil {
		t.Fatal(err)
	}
	if d := jsonDiff("Observation", want, got); d != "" {
		t.Errorf("round trip: %s", d)
	}
	subject := rec.Column(rec.Schema().FieldIndices("subject")[0]).(*array.Struct)
	typ := subject.DataType().(*arrow.StructType)
	idx, _ := typ.FieldIdx("referenceId")
	if g := subject.Field(idx).(*array.String).Value(0); g != "p2" {
		t.Errorf("subject.referenceId = %q, want p2", g)
	}
}

func TestConvertPrimitiveArrays(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) }) // after the plan's release, which newTestTable registers
	c, tab := newTestTable(t, mem, "Patient")
	line := `{"resourceType":"Patient","birthDate":"1974","_birthDate":{"extension":[{"url":"u","valueDateTime":"1974-12-25T14:35:45-05:00"}]},` +
		`"name":[{"family":"A"},{"given":[null,"Jim"],"_given":[{"extension":[{"url":"v","valueCode":"x"}]},null]}]}`
	rec, got := convertRow(t, c, tab, mem, line)
	pe := rec.Column(len(rec.Columns()) - 1).(*array.String).Value(0)
	want := `{"birthDate":{"extension":[{"url":"u","valueDateTime":"1974-12-25T14:35:45-05:00"}]},"name[1].given[0]":{"extension":[{"url":"v","valueCode":"x"}]}}`
	if pe != want {
		t.Errorf("_primitiveExtensions = %s\nwant %s", pe, want)
	}
	var src map[string]any
	if err := decodeJSON([]byte(line), &src); err != nil {
		t.Fatal(err)
	}
	if d := jsonDiff("Patient", src, got); d != "" {
		t.Errorf("round trip: %s", d)
	}
}

func TestSafeName(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{name: "element", in: "hairColour", want: "hairColour"},
		{name: "value-like", in: "John Smith", want: "(a JSON key)"},
		{name: "long", in: strings.Repeat("a", 65), want: "(a JSON key)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := safeName([]byte(tt.in)); got != tt.want {
				t.Errorf("safeName(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// benchLines reads the synthea excerpt: a mix of all 19 synthea types.
func benchLines(b *testing.B) ([][]byte, int) {
	b.Helper()
	data, err := os.ReadFile("testdata/synthea-excerpt.ndjson")
	if err != nil {
		b.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	return lines, len(data)
}

// BenchmarkConvert measures conversion alone (no validation) into builders flushed every DefaultBatchRows rows.
func BenchmarkConvert(b *testing.B) {
	lines, size := benchLines(b)
	w, err := NewWorker(testRegistry(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Release()
	types := make([]string, len(lines))
	for i, l := range lines {
		var hdr struct{ ResourceType string }
		if err := json.Unmarshal(l, &hdr); err != nil {
			b.Fatal(err)
		}
		types[i] = hdr.ResourceType
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, l := range lines {
			tab, err := w.table(types[j])
			if err != nil {
				b.Fatal(err)
			}
			if err := w.conv.convert(tab, l); err != nil {
				b.Fatal(err)
			}
		}
		if w.Pending() >= DefaultBatchRows {
			recs, err := w.Flush(0)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range recs {
				r.Release()
			}
		}
	}
}

// BenchmarkProcess measures validation and conversion together, as the pipeline runs them.
func BenchmarkProcess(b *testing.B) {
	lines, size := benchLines(b)
	w, err := NewWorker(testRegistry(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Release()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, l := range lines {
			if _, err := w.Process(l); err != nil {
				b.Fatal(err)
			}
		}
		if w.Pending() >= DefaultBatchRows {
			recs, err := w.Flush(0)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range recs {
				r.Release()
			}
		}
	}
}

// FuzzConvert feeds arbitrary bytes straight to the converter (no Validator): it must never panic, and a line it
// rejects must leave the columns exactly as they were. After each line it converts two small probe rows, and the
// columns (and every 100 rows the records) must equal those of a second Worker that converted only the lines the
// first accepted, and the probes.
func FuzzConvert(f *testing.F) {
	data, err := os.ReadFile("testdata/hl7-examples.ndjson")
	if err != nil {
		f.Fatal(err)
	}
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if len(l) < 20000 {
			f.Add(l)
		}
	}
	f.Add([]byte(`{"resourceType":"Observation","valueQuantity":{"value":-},"status":"final"}`))
	f.Add([]byte(`{"resourceType":"Observation","component":[{"valueString":"a\u00"}]}`))
	f.Add([]byte(`{"resourceType":"Observation","_status":[null,{"id":"x"}],"issued":"2020-01-01T00:00:60Z"}`))
	f.Add([]byte(`{"subject":{"reference":"urn:uuid:\"x"},"contained":[1,{"a":[]}],"extension":[null]}`))
	// Lines that fail after values were appended: the row must be rolled back.
	f.Add([]byte(`{"resourceType":"Observation","id":"o","meta":{"tag":[{"code":"a"},{"code":"b"}]},"status":"final",` +
		`"code":{"coding":[{"system":"s","code":"c"},{"bogus":1}]}}`))
	f.Add([]byte(`{"resourceType":"Patient","id":"p","active":true,"name":[{"given":["a","b"]}],"_birthDate":{"id":"x"},` +
		`"birthDate":"2000","deceasedBoolean":"yes"}`))
	f.Add([]byte(`{"resourceType":"QuestionnaireResponse","id":"q","item":[{"linkId":"1","item":[{"linkId":"2",` +
		`"answer":[{"valueBoolean":true},{"valueInteger":1.5}]}]}]}`))
	reg := testRegistry(f)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(f, 0)
	w, err := NewWorker(reg, Options{Allocator: mem})
	if err != nil {
		f.Fatal(err)
	}
	defer w.Release()
	clean, err := NewWorker(reg, Options{Allocator: mem})
	if err != nil {
		f.Fatal(err)
	}
	defer clean.Release()
	types := []string{"Observation", "Patient", "QuestionnaireResponse"}
	f.Fuzz(func(t *testing.T, line []byte) {
		for _, typ := range types {
			tab, err := w.table(typ)
			if err != nil {
				t.Fatal(err)
			}
			cleanTab, err := clean.table(typ)
			if err != nil {
				t.Fatal(err)
			}
			if w.conv.convert(tab, line) == nil { // counts the row when it converts
				if err := clean.conv.convert(cleanTab, line); err != nil {
					t.Fatalf("%s: converts once, then fails: %v", typ, err)
				}
			}
			if tab.rowsMisaligned() {
				t.Fatalf("%s: columns misaligned after convert", typ)
			}
			// An empty row and a list with null elements pad over what a rejected line could have left behind.
			for _, probe := range []string{`{"resourceType":"` + typ + `"}`,
				`{"resourceType":"` + typ + `","meta":{"tag":[{"code":"p"},null,null,{"code":"q"}]}}`} {
				for _, c := range []struct {
					w   *Worker
					tab *table
				}{{w, tab}, {clean, cleanTab}} {
					if err := c.w.conv.convert(c.tab, []byte(probe)); err != nil {
						t.Fatalf("%s probe: %v", typ, err)
					}
				}
			}
		}
		colOf := func(p *plan) *col {
			if p == nil {
				return nil
			}
			return p.col
		}
		for _, typ := range types {
			tp := w.tables[typ].plan
			for i, kp := range tp.kids {
				if err := sameCol(colOf(kp), colOf(clean.tables[typ].plan.kids[i])); err != nil {
					t.Fatalf("%s.%s: a rejected line left something behind: %v", typ, tp.root.Fields[i].Name, err)
				}
			}
		}
		if w.Pending() < 100 {
			return
		}
		recs, err := w.Flush(0)
		if err != nil {
			t.Fatal(err)
		}
		want, err := clean.Flush(0)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			for _, r := range append(recs, want...) {
				r.Release()
			}
		}()
		if len(recs) != len(want) {
			t.Fatalf("%d records after rejected lines, %d without them", len(recs), len(want))
		}
		for i := range recs {
			if !array.RecordEqual(recs[i], want[i]) {
				t.Fatalf("record %d: a rejected line left something behind", i)
			}
		}
	})
}

// sameCol compares the state of col got with that of col want, which received the same rows: entries, validity,
// offsets and values of valid entries, and the zeroes past its entries that padding relies on. Entries past a
// col's n are nulls not yet padded, so the two may have materialised different numbers of trailing nulls. A nil
// col, one not made yet, compares as an empty one.
func sameCol(got, want *col) error {
	switch {
	case got == nil && want == nil:
		return nil
	case got == nil:
		got = &col{kind: want.kind, typ: want.typ, kids: make([]*col, len(want.kids))}
	case want == nil:
		want = &col{kind: got.kind, typ: got.typ, kids: make([]*col, len(got.kids))}
	}
	if got.valid != want.valid {
		return fmt.Errorf("%d valid entries, want %d", got.valid, want.valid)
	}
	n := max(got.n, want.n)
	bit := func(b []byte, i int) bool { return i>>3 < len(b) && b[i>>3]&(1<<(i&7)) != 0 }
	noBitsPast := func(what string, b []byte, from int) error {
		for i := from; i < len(b)*8; i++ {
			if bit(b, i) {
				return fmt.Errorf("%s bit %d set past %d entries", what, i, got.n)
			}
		}
		return nil
	}
	offset := func(c *col, i int) int32 { // entries past n repeat the last offset
		if c.n == 0 {
			return 0
		}
		return c.offset(min(i, c.n))
	}
	for i := range n {
		if bit(got.bits.b, i) != bit(want.bits.b, i) {
			return fmt.Errorf("entry %d: validity differs", i)
		}
	}
	if err := noBitsPast("validity", got.bits.b, got.n); err != nil {
		return err
	}
	switch got.kind {
	case colStruct:
		for i := range got.kids {
			if err := sameCol(got.kids[i], want.kids[i]); err != nil {
				return fmt.Errorf("field %d: %w", i, err)
			}
		}
	case colList, colBinary:
		for i := 0; i <= n; i++ {
			if offset(got, i) != offset(want, i) {
				return fmt.Errorf("offset %d differs", i)
			}
		}
		if got.n > 0 {
			for i, b := range got.offs.b[4*(got.n+1):] {
				if b != 0 {
					return fmt.Errorf("offsets byte %d set past %d entries", 4*(got.n+1)+i, got.n)
				}
			}
		}
		if got.kind == colList {
			if err := sameCol(got.kids[0], want.kids[0]); err != nil {
				return fmt.Errorf("element: %w", err)
			}
		} else if end := offset(got, n); !bytes.Equal(got.vals.b[:end], want.vals.b[:end]) {
			return fmt.Errorf("string data differs")
		}
	case colBool:
		for i := range n {
			if bit(got.vals.b, i) != bit(want.vals.b, i) {
				return fmt.Errorf("entry %d: value differs", i)
			}
		}
		if err := noBitsPast("value", got.vals.b, got.n); err != nil {
			return err
		}
	case colFixed8:
		for i := range n {
			if bit(got.bits.b, i) && !bytes.Equal(got.vals.b[8*i:8*i+8], want.vals.b[8*i:8*i+8]) {
				return fmt.Errorf("entry %d: value differs", i)
			}
		}
	}
	return nil
}

// TestConvertEveryType binds builders for all 146 R4 types and converts a minimal resource of each (straight to
// the converter: the Validator would want required elements).
func TestConvertEveryType(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	reg := testRegistry(t)
	w, err := NewWorker(reg, Options{Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Release()
	types := reg.Types()
	for _, typ := range types {
		tab, err := w.table(typ)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		line := `{"resourceType":"` + typ + `","id":"x1","_id":{"extension":[{"url":"u","valueBoolean":true}]},` +
			`"meta":{"lastUpdated":"2020-01-01T00:00:00Z"}`
		if _, ok := tab.res.Root.Lookup([]byte("extension")); ok { // DomainResources; not Binary, Bundle, Parameters
			line += `,"extension":[{"url":"u","valueString":"s"}]`
		}
		line += "}"
		if err := w.conv.convert(tab, []byte(line)); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
	}
	recs, err := w.Flush(0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	if len(recs) != len(types) {
		t.Fatalf("%d records for %d types", len(recs), len(types))
	}
	for i, rec := range recs {
		res, _ := reg.Resource(types[i])
		if !rec.Schema().Equal(res.Schema) || rec.NumRows() != 1 {
			t.Errorf("%s: schema equal %v, %d rows", types[i], rec.Schema().Equal(res.Schema), rec.NumRows())
			continue
		}
		got, err := rowJSON(res, rec, 0)
		if err != nil {
			t.Fatalf("%s: %v", types[i], err)
		}
		_, domain := res.Root.Lookup([]byte("extension"))
		if got["id"] != "x1" || got["_id"] == nil || got["meta"] == nil || (domain && got["extension"] == nil) {
			t.Errorf("%s: row read back as %v", types[i], got)
		}
	}
}

// TestPlanBindsEveryColumn makes the plan and col of every column of all 146 R4 types, which a Worker only makes
// for the elements it meets: each binds (the Arrow type of its col is the schema's), there is one leaf plan per
// leaf of the table's Arrow schema, and a record of the fully bound plan has the table's schema.
func TestPlanBindsEveryColumn(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	reg := testRegistry(t)
	var bind func(p *plan) (leaves int, err error)
	bind = func(p *plan) (int, error) {
		if p.kind != schema.Struct && p.kind != schema.Choice && p.root == nil {
			return 1, nil
		}
		n := 0
		for i := range p.kids {
			kp, err := p.kid(i)
			if err != nil {
				return 0, err
			}
			k, err := bind(kp)
			if err != nil {
				return 0, err
			}
			n += k
		}
		return n, nil
	}
	var arrowLeaves func(dt arrow.DataType) int
	arrowLeaves = func(dt arrow.DataType) int {
		switch dt := dt.(type) {
		case *arrow.StructType:
			n := 0
			for i := range dt.NumFields() {
				n += arrowLeaves(dt.Field(i).Type)
			}
			return n
		case *arrow.ListType:
			return arrowLeaves(dt.Elem())
		}
		return 1
	}
	for _, typ := range reg.Types() {
		res, err := reg.Build(typ)
		if err != nil {
			t.Fatal(err)
		}
		p := newRootPlan(res, &arena{mem: mem})
		leaves, err := bind(p)
		if err != nil {
			p.release()
			t.Fatalf("%s: %v", typ, err)
		}
		want := 0
		for _, f := range res.Schema.Fields() {
			want += arrowLeaves(f.Type)
		}
		rec := p.record(res.Schema, 0, mem)
		// Records are not checked against their schema when made (flushRecord): every column's type is the
		// field's.
		for i, f := range res.Schema.Fields() {
			if !arrow.TypeEqual(rec.Column(i).DataType(), f.Type) {
				t.Errorf("%s.%s: column of type %s, field of type %s", typ, f.Name, rec.Column(i).DataType(), f.Type)
			}
		}
		if leaves != want || !rec.Schema().Equal(res.Schema) {
			t.Errorf("%s: %d leaf plans for %d leaf columns; record schema equal: %v", typ, leaves, want, rec.Schema().Equal(res.Schema))
		}
		rec.Release()
		p.release()
	}
}

// TestPlanMadeOnUse checks that a table's plans and cols are made for the elements its rows have: after a
// Patient with a name, the name has a plan (and its family), the address has none, and the record still holds
// every column, the address null.
func TestPlanMadeOnUse(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) }) // after the plan's release, which newTestTable registers
	c, tab := newTestTable(t, mem, "Patient")
	for _, kp := range tab.plan.kids {
		if kp != nil {
			t.Fatalf("a fresh plan has the plan of %s", kp.node.Path())
		}
	}
	if err := c.convert(tab, []byte(`{"resourceType":"Patient","name":[{"family":"Chalmers"}]}`)); err != nil {
		t.Fatal(err)
	}
	kidOf := func(p *plan, name string) *plan {
		t.Helper()
		m, ok := p.node.Lookup([]byte(name))
		if !ok {
			t.Fatalf("%s has no %s", p.node.Path(), name)
		}
		return p.kids[m.Child]
	}
	name := kidOf(tab.plan, "name")
	if name == nil || kidOf(name, "family") == nil || kidOf(name, "given") != nil {
		t.Errorf("plans after a name with a family: name %v, family and not given", name != nil)
	}
	if kidOf(tab.plan, "address") != nil {
		t.Error("the address has a plan, but no row has an address")
	}
	rec := tab.record(mem)
	defer rec.Release()
	if !rec.Schema().Equal(tab.res.Schema) || rec.NumRows() != 1 {
		t.Fatalf("record: schema equal %v, %d rows", rec.Schema().Equal(tab.res.Schema), rec.NumRows())
	}
	// Every array, down to the children of the null columns, has its field's type and length.
	var check func(d arrow.ArrayData, dt arrow.DataType, n int, path string)
	check = func(d arrow.ArrayData, dt arrow.DataType, n int, path string) {
		if !arrow.TypeEqual(d.DataType(), dt) || d.Len() != n {
			t.Errorf("%s: %s of length %d, want %s of length %d", path, d.DataType(), d.Len(), dt, n)
			return
		}
		switch dt := dt.(type) {
		case *arrow.StructType:
			for i := range dt.NumFields() {
				check(d.Children()[i], dt.Field(i).Type, n, path+"."+dt.Field(i).Name)
			}
		case *arrow.ListType:
			end := 0
			if n > 0 {
				l := array.NewListData(d)
				end = int(l.Offsets()[n])
				l.Release()
			}
			check(d.Children()[0], dt.Elem(), end, path+"[]")
		}
	}
	for i, f := range rec.Schema().Fields() {
		check(rec.Column(i).Data(), f.Type, 1, f.Name)
	}
	got, err := rowJSON(tab.res, rec, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got["address"] != nil || got["name"] == nil {
		t.Errorf("row read back as %v", got)
	}
}

// TestCompactJSON checks compactJSON against json.Compact: the committed excerpts as they are and indented, and
// strings that hold whitespace, escaped quotes and backslashes.
func TestCompactJSON(t *testing.T) {
	var inputs [][]byte
	for _, f := range []string{"testdata/hl7-examples.ndjson", "testdata/synthea-excerpt.ndjson"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for line := range bytes.Lines(data) {
			line = bytes.TrimRight(line, "\r\n")
			var indented bytes.Buffer
			if err := json.Indent(&indented, line, "\t", " \r\n "); err != nil {
				t.Fatal(err)
			}
			inputs = append(inputs, line, indented.Bytes())
		}
	}
	inputs = append(inputs,
		[]byte(` { "a b" : [ 1 , "x\" y" , "\\" , "\\\" }" ] , "c":{ } } `),
		[]byte("\"\\\\\""), []byte(` 12 `), []byte(`[ ]`), []byte("\t\"\\u0022 \\n\"\n"))
	for i, in := range inputs {
		var want bytes.Buffer
		if err := json.Compact(&want, in); err != nil {
			t.Fatalf("input %d: %v", i, err)
		}
		got := compactJSON([]byte("prefix"), in)
		if !bytes.Equal(got[len("prefix"):], want.Bytes()) || string(got[:len("prefix")]) != "prefix" {
			t.Fatalf("input %d: compactJSON gave %d bytes, json.Compact %d", i, len(got)-len("prefix"), want.Len())
		}
	}
}
