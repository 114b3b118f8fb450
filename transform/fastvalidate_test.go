package transform

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// parityCounts are the outcome of comparing both paths over a set of lines.
type parityCounts struct {
	lines, refValid, fastValid int
	// wrong counts lines the fast validator accepted and the reference rejects: the one disagreement the design
	// allows none of (everything else the fast path hands to the reference path).
	wrong int
	// explained counts the lines the fast validator rejected itself (explain), with the reference's issues.
	explained int
}

// parityCheck compares the fast validator with the reference on one line and records the outcome.
func parityCheck(t testing.TB, fv *fastValidator, ref *Validator, name string, line []byte, c *parityCounts) {
	t.Helper()
	c.lines++
	want := ref.Validate(line)
	if len(want.Issues) == 0 {
		c.refValid++
	}
	got, ok := fv.validate(line)
	if !ok {
		if got, ok = fv.explain(line); ok {
			c.explained++
			if got.ResourceType != want.ResourceType || got.Known != want.Known || got.ID != want.ID ||
				got.Version != want.Version || !slices.Equal(got.Issues, want.Issues) {
				t.Errorf("%s: fast path explains the line as %+v, reference %+v", name, got, want)
			}
		}
		return
	}
	c.fastValid++
	if len(want.Issues) > 0 {
		c.wrong++
		t.Errorf("%s: fast path accepts a line the reference rejects: %v", name, want.Issues)
		return
	}
	if got.ResourceType != want.ResourceType || got.Known != want.Known || got.ID != want.ID || got.Version != want.Version {
		t.Errorf("%s: fast verdict %+v, reference %+v", name, got, want)
	}
	if err := sameTree(fv.tree, line); err != nil {
		t.Errorf("%s: the tree the fast validator built: %v", name, err)
	}
}

// sameTree checks that tree, built by the fast validator for line, is the tree jtree.parse builds.
func sameTree(tree *jtree, line []byte) error {
	if !tree.holds(line) {
		return fmt.Errorf("not built for the line")
	}
	var want jtree
	if _, err := want.parse(line); err != nil {
		return fmt.Errorf("the line does not parse: %v", err)
	}
	if !slices.Equal(tree.nodes, want.nodes) {
		return fmt.Errorf("%d nodes differ from the parser's %d", len(tree.nodes), len(want.nodes))
	}
	if !slices.Equal(tree.kids, want.kids) {
		return fmt.Errorf("children differ")
	}
	return nil
}

func newFast(t testing.TB) *fastValidator {
	t.Helper()
	fv, err := newFastValidator()
	if err != nil {
		t.Fatalf("newFastValidator: %v", err)
	}
	fv.tree = new(jtree) // as a Worker's: parityCheck compares what it builds with the parser's tree
	return fv
}

// TestFastParity runs both paths over all of ../shared/data: the fast validator must never accept a line the
// reference rejects. It logs how many valid lines it vouches for on its own per data set.
func TestFastParity(t *testing.T) {
	if testing.Short() {
		t.Skip("whole-data parity in -short")
	}
	sets := []struct {
		name string
		glob string
		// minShare is the least share of the reference-valid lines the fast path must accept on its own.
		minShare float64
	}{
		{name: "synthea-100", glob: "synthea-100/*.ndjson", minShare: 0.99},
		{name: "synthea-group-by-patient", glob: "synthea-group-by-patient/*.ndjson", minShare: 0.99},
		{name: "r4-examples", glob: "r4-examples/*.ndjson", minShare: 0.99},
	}
	fv, ref := newFast(t), valNew(t)
	for _, s := range sets {
		t.Run(s.name, func(t *testing.T) {
			files, _ := filepath.Glob(filepath.Join(valNeedData(t, ""), s.glob))
			if len(files) == 0 {
				t.Skipf("no files for %s", s.glob)
			}
			var c parityCounts
			for _, f := range files {
				valEachLine(t, f, func(n int, line []byte) {
					parityCheck(t, fv, ref, filepath.Base(f)+":"+itoa(n), line, &c)
				})
			}
			t.Logf("%s: %d lines, %d valid, fast path vouches for %d, %d wrong, explains %d", s.name, c.lines, c.refValid, c.fastValid, c.wrong, c.explained)
			if share := float64(c.fastValid) / float64(max(c.refValid, 1)); share < s.minShare {
				t.Errorf("fast path vouches for %.3f of the valid lines, want at least %.2f", share, s.minShare)
			}
		})
	}
	t.Run("fhir-test-cases", func(t *testing.T) {
		dir := valNeedData(t, filepath.Join("invalid", "fhir-test-cases", "cases"))
		files, _ := filepath.Glob(filepath.Join(dir, "*.json"))
		var c parityCounts
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			parityCheck(t, fv, ref, filepath.Base(f), valOneLine(data), &c)
		}
		t.Logf("fhir-test-cases: %d lines, %d valid, fast path vouches for %d, %d wrong, explains %d", c.lines, c.refValid, c.fastValid, c.wrong, c.explained)
	})
	t.Run("google-fhir-primitives", func(t *testing.T) {
		dir := valNeedData(t, filepath.Join("invalid", "google-fhir-primitives"))
		files, _ := filepath.Glob(filepath.Join(dir, "*.ndjson"))
		var c parityCounts
		for _, f := range files {
			typ, _, _ := strings.Cut(filepath.Base(f), ".")
			valEachLine(t, f, func(n int, value []byte) {
				parityCheck(t, fv, ref, filepath.Base(f)+":"+itoa(n), wrapPrimitive(typ, value), &c)
			})
		}
		t.Logf("google-fhir-primitives: %d lines, %d valid, fast path vouches for %d, %d wrong, explains %d", c.lines, c.refValid, c.fastValid, c.wrong, c.explained)
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// fuzzSeeds are real resources (HL7 examples and Synthea) small enough to mutate quickly.
func fuzzSeeds(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	for _, f := range []string{"hl7-examples.ndjson", "synthea-excerpt.ndjson"} {
		valEachLine(t, filepath.Join("testdata", f), func(_ int, line []byte) {
			if len(line) < 20000 {
				out = append(out, line)
			}
		})
	}
	return out
}

// FuzzFastParity feeds arbitrary bytes to both paths: the fast validator must never accept what the reference
// rejects, nor panic.
func FuzzFastParity(f *testing.F) {
	for _, l := range fuzzSeeds(f) {
		f.Add(l)
	}
	// HL7 examples written with their keys sorted, resourceType among them; not in fuzzSeeds, whose order
	// FuzzFastParityMutate's corpus indexes.
	valEachLine(f, filepath.Join("testdata", "sorted-keys.ndjson"), func(_ int, line []byte) { f.Add(line) })
	fv, ref := newFast(f), valNew(f)
	f.Fuzz(func(t *testing.T, line []byte) {
		var c parityCounts
		parityCheck(t, fv, ref, "fuzz", line, &c)
	})
}

// FuzzFastParityMutate mutates one value or key of a real resource in a way that keeps most of the line valid
// JSON (replace it by a JSON string, raw text, null or nothing, prefix a key with "_", insert text after it), so
// that the fuzzer explores FHIR rules rather than JSON syntax. The fast validator must never accept what the
// reference rejects.
func FuzzFastParityMutate(f *testing.F) { fuzzMutate(f, fuzzSeeds(f)) }

// FuzzFastParityDrop drops members of a real resource: one member, chosen by its place among all the objects'
// members, or with every member of the same name at once (every "url" of the extensions, say). The lines stay
// well-formed, and dropping a required element is the one fault explain answers for, so this is where its issues
// meet the reference's most; anything else the fast path must still leave to the reference.
func FuzzFastParityDrop(f *testing.F) {
	seeds := fuzzSeeds(f)
	for i := range seeds {
		f.Add(uint16(i), uint32(i*5), false)
		f.Add(uint16(i), uint32(i*3+1), true)
	}
	fv, ref := newFast(f), valNew(f)
	f.Fuzz(func(t *testing.T, seed uint16, at uint32, sameName bool) {
		line := seeds[int(seed)%len(seeds)]
		members := memberSpans(line)
		if len(members) == 0 {
			return
		}
		pick := members[int(at)%len(members)]
		var drop [][2]int
		for _, m := range members {
			if m == pick || sameName && m.key == pick.key {
				drop = append(drop, m.span)
			}
		}
		var c parityCounts
		parityCheck(t, fv, ref, "dropped "+pick.key, cutSpans(line, drop), &c)
	})
}

// TestFastParityDropEach drops each member of each fuzz seed in turn, the 2,230 lines that gives, and checks
// both paths on them (parityCheck: explained lines must carry the reference's issues). Most of the lines the
// reference rejects lack a required element, and explain must answer for most of those itself.
func TestFastParityDropEach(t *testing.T) {
	fv, ref := newFast(t), valNew(t)
	var c parityCounts
	for _, line := range fuzzSeeds(t) {
		for _, m := range memberSpans(line) {
			parityCheck(t, fv, ref, "dropped "+m.key, cutSpans(line, [][2]int{m.span}), &c)
		}
	}
	invalid := c.lines - c.refValid
	t.Logf("%d lines, %d invalid, %d explained by the fast path", c.lines, invalid, c.explained)
	if invalid == 0 || c.explained*4 < invalid*3 {
		t.Errorf("the fast path explains %d of %d invalid lines, want at least three quarters", c.explained, invalid)
	}
}

// member is one member of a JSON object in a line: its key, and the span to cut to drop it with its comma.
type member struct {
	key  string
	span [2]int
}

// memberSpans lists every member of every object in line (well-formed JSON), outermost first. Cutting a
// member's span, or the spans of several members, leaves well-formed JSON.
func memberSpans(line []byte) []member {
	var t jtree
	root, err := t.parse(line)
	if err != nil {
		return nil
	}
	var out []member
	var walk func(i int32)
	walk = func(i int32) {
		kids := t.children(i)
		if t.nodes[i].kind == jObject {
			for j := 0; j < len(kids); j += 2 {
				k, v := t.nodes[kids[j]], t.nodes[kids[j+1]]
				start, end := int(k.start), int(v.end)
				if j+2 < len(kids) {
					end = int(t.nodes[kids[j+2]].start) // with the comma after it
				} else if j > 0 {
					start = int(t.nodes[kids[j-1]].end) // the last: with the comma before it
				}
				key, _ := t.text(kids[j])
				out = append(out, member{key: string(key), span: [2]int{start, end}})
			}
		}
		for _, k := range kids {
			walk(k)
		}
	}
	walk(root)
	return out
}

// cutSpans returns line without the spans, which may nest (a member inside a dropped one) but not overlap
// otherwise.
func cutSpans(line []byte, spans [][2]int) []byte {
	slices.SortFunc(spans, func(a, b [2]int) int { return a[0] - b[0] })
	out := make([]byte, 0, len(line))
	at := 0
	for _, sp := range spans {
		if sp[0] < at {
			continue // inside a span already cut
		}
		out = append(out, line[at:sp[0]]...)
		at = sp[1]
	}
	return append(out, line[at:]...)
}

// FuzzFastParityMutateSorted is FuzzFastParityMutate over the seeds written with their keys sorted, where the fast
// validator looks for each resource's resourceType among its members (top-level and contained resources alike).
func FuzzFastParityMutateSorted(f *testing.F) { fuzzMutate(f, sortedSeeds(f)) }

// sortedSeeds are fuzzSeeds written again with every object's keys sorted, as exports that sort their keys write
// them: resourceType comes after "code" or "contained". Numbers keep their text.
func sortedSeeds(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	for _, line := range fuzzSeeds(t) {
		d := json.NewDecoder(bytes.NewReader(line))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("seed: %v", err)
		}
		var buf bytes.Buffer
		e := json.NewEncoder(&buf)
		e.SetEscapeHTML(false)
		if err := e.Encode(v); err != nil { // encoding/json writes a map's keys sorted
			t.Fatalf("seed: %v", err)
		}
		out = append(out, bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	}
	return out
}

// TestFastSortedKeys checks every seed written with sorted keys on both paths: the fast validator vouches for
// it exactly when it vouches for the seed as written (the order of members changes neither path's verdict), and
// builds the parser's tree.
func TestFastSortedKeys(t *testing.T) {
	fv, ref := newFast(t), valNew(t)
	seeds, sorted := fuzzSeeds(t), sortedSeeds(t)
	later, vouched := 0, 0
	for i, line := range sorted {
		var c, orig parityCounts
		parityCheck(t, fv, ref, "sorted seed "+itoa(i), line, &c)
		parityCheck(t, fv, ref, "seed "+itoa(i), seeds[i], &orig)
		if c.fastValid != orig.fastValid {
			t.Errorf("seed %d: the fast validator vouches %v for it sorted, %v as written", i, c.fastValid == 1, orig.fastValid == 1)
		}
		if !bytes.HasPrefix(line, []byte(`{"resourceType"`)) {
			later++
		}
		vouched += c.fastValid
	}
	t.Logf("%d seeds, %d with resourceType after another member, %d the fast path vouches for", len(sorted), later, vouched)
	if later < len(sorted)/2 {
		t.Errorf("only %d of %d sorted seeds have resourceType later than their first member", later, len(sorted))
	}
}

func fuzzMutate(f *testing.F, seeds [][]byte) {
	for i := range seeds {
		f.Add(uint16(i), uint32(i*7), uint8(i%7), "x")
	}
	f.Add(uint16(0), uint32(3), uint8(0), "Patient/1/_history/")
	f.Add(uint16(1), uint32(11), uint8(1), "1e3")
	f.Add(uint16(2), uint32(5), uint8(0), "2020-02-30")
	fv, ref := newFast(f), valNew(f)
	f.Fuzz(func(t *testing.T, seed uint16, at uint32, op uint8, text string) {
		line := seeds[int(seed)%len(seeds)]
		spans := tokenSpans(line)
		if len(spans) == 0 {
			return
		}
		sp := spans[int(at)%len(spans)]
		var repl []byte
		switch op % 7 {
		case 0:
			repl, _ = json.Marshal(text)
		case 1:
			repl = []byte(text)
		case 2:
			repl = []byte("null")
		case 3:
			repl = nil
		case 4:
			if line[sp[0]] != '"' {
				return
			}
			repl = append([]byte(`"_`), line[sp[0]+1:sp[1]]...)
		case 5:
			repl = append(append([]byte(nil), line[sp[0]:sp[1]]...), text...)
		case 6:
			repl = []byte("[]")
		}
		mutated := make([]byte, 0, len(line)+len(repl))
		mutated = append(append(append(mutated, line[:sp[0]]...), repl...), line[sp[1]:]...)
		var c parityCounts
		parityCheck(t, fv, ref, "mutated", mutated, &c)
	})
}

// tokenSpans returns the byte spans of the strings, numbers and literals of a JSON line.
func tokenSpans(b []byte) [][2]int {
	var out [][2]int
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			end := stringEnd(b, i)
			out = append(out, [2]int{i, end})
			i = end - 1
		case c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n':
			end := valueEnd(b, i)
			out = append(out, [2]int{i, end})
			i = end - 1
		}
	}
	return out
}

// BenchmarkValidators reports MB/s per core of both validation paths on ../shared/data/synthea-100, validation
// alone and validation plus conversion into Arrow (Worker.Process), on one goroutine. Run it with
// -benchtime=1x or 2x: one pass over the data set takes seconds on the reference path.
func BenchmarkValidators(b *testing.B) {
	files, _ := filepath.Glob(filepath.Join(valData, "synthea-100", "*.ndjson"))
	if len(files) == 0 {
		b.Skip("../shared/data/synthea-100 not available")
	}
	var lines [][]byte
	size := 0
	for _, f := range files {
		valEachLine(b, f, func(_ int, line []byte) {
			lines = append(lines, line)
			size += len(line)
		})
	}
	reg := testRegistry(b)
	for _, mode := range []string{ValidatorReference, ValidatorFast} {
		b.Run("validate/"+mode, func(b *testing.B) {
			w, err := NewWorker(reg, Options{Validator: mode})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Release()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				for _, l := range lines {
					if !w.Validate(l).Valid {
						b.Fatal("synthea-100 holds an invalid line")
					}
				}
			}
			fast, ref := w.ValidatorStats()
			b.ReportMetric(float64(fast)/float64(max(fast+ref, 1)), "fast-share")
		})
	}
	for _, mode := range []string{ValidatorReference, ValidatorFast} {
		b.Run("process/"+mode, func(b *testing.B) {
			w, err := NewWorker(reg, Options{Validator: mode})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Release()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				for _, l := range lines {
					if _, err := w.Process(l); err != nil {
						b.Fatal(err)
					}
					if w.Full() {
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
		})
	}
}

// TestFastCompanions checks the "_name" companions of primitive elements, which the fuzzers reach only by chance,
// both ways: the fast validator must not vouch for a line the reference rejects (companion arrays of another
// length than the values), and vouches for a value with its companion.
func TestFastCompanions(t *testing.T) {
	fv, ref := newFast(t), valNew(t)
	for _, line := range []string{
		`{"resourceType":"Patient","birthDate":"1970-01-01","_birthDate":{"id":"b"}}`,
		`{"resourceType":"Patient","_birthDate":{"id":"b"}}`,
		`{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[null,{"id":"g"}]}]}`,
		`{"resourceType":"Patient","name":[{"given":["A"],"_given":[null,{"id":"g"}]}]}`,
		`{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[{"id":"g"}]}]}`,
		`{"resourceType":"Patient","name":[{"_given":[{"id":"g"}]}]}`,
		`{"resourceType":"Patient","name":[{"given":["A"],"_given":[{"id":"f"},{"id":"g"}]}]}`,
		`{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[{"id":"f"},{"id":"g"}]}]}`,
	} {
		var c parityCounts
		parityCheck(t, fv, ref, line, []byte(line), &c)
	}
	longer := []byte(`{"resourceType":"Patient","name":[{"given":["A"],"_given":[{"id":"f"},{"id":"g"}]}]}`)
	if len(ref.Validate(longer).Issues) == 0 {
		t.Error("the reference accepts companions that outnumber their values: the case above checks nothing")
	}
	var c parityCounts
	parityCheck(t, fv, ref, "value and companion", []byte(`{"resourceType":"Patient","birthDate":"1970-01-01","_birthDate":{"id":"b"}}`), &c)
	if c.fastValid != 1 {
		t.Error("the fast validator does not vouch for a value with its companion")
	}
	// A companion without its value: a primitive with only an extension (r4-examples' ActivityDefinitions have
	// a Timing's "_event" so), or only an id, which the reference takes; null items it does not.
	for _, tt := range []struct {
		line  string
		vouch bool
	}{
		{`{"resourceType":"Patient","_birthDate":{"extension":[{"url":"http://example.org/x","valueString":"a"}]}}`, true},
		{`{"resourceType":"Patient","_gender":{"id":"b"}}`, true},
		{`{"resourceType":"Patient","_active":{}}`, true},
		{`{"resourceType":"Patient","name":[{"_given":[{"id":"f"},{"extension":[{"url":"http://example.org/x","valueCode":"a"}]}]}]}`, true},
		{`{"resourceType":"ActivityDefinition","status":"draft","timingTiming":{"_event":[{"extension":[{"url":"http://example.org/x","valueExpression":{"language":"text/cql","expression":"Now()"}}]}]}}`, true},
		{`{"resourceType":"Patient","name":[{"_given":[{"id":"f"},null]}]}`, false},
		{`{"resourceType":"Patient","gender":null,"_gender":{"id":"b"}}`, false},
		{`{"resourceType":"Patient","_gender":{"id":"b","extension":{}}}`, false},
	} {
		checkVouch(t, fv, ref, tt.line, tt.vouch)
	}
}

// checkVouch runs parityCheck on line and fails t when the fast validator vouches for it other than want says.
func checkVouch(t *testing.T, fv *fastValidator, ref *Validator, line string, want bool) {
	t.Helper()
	var c parityCounts
	parityCheck(t, fv, ref, line, []byte(line), &c)
	if got := c.fastValid == 1; got != want {
		t.Errorf("%s: fast validator vouches %v, want %v (the reference finds it valid: %v)", line, got, want, c.refValid == 1)
	}
}

// TestFastResourceTypeLater checks resources whose resourceType is not their first member, as exports that sort
// their keys write them (r4-examples' ConceptMaps, SearchParameters and Bundles): the fast validator vouches for
// them, at the top and nested, builds the same tree as the parser, and leaves the doubtful ones to the reference.
func TestFastResourceTypeLater(t *testing.T) {
	fv, ref := newFast(t), valNew(t)
	for _, tt := range []struct {
		line   string
		vouch  bool
		wantID string
	}{
		{line: `{"id":"a","resourceType":"Patient","birthDate":"1970-01-01"}`, vouch: true, wantID: "a"},
		{line: `{"birthDate":"1970-01-01","gender":"male","resourceType":"Patient"}`, vouch: true},
		{line: ` { "active" : true , "resourceType" : "Patient" } `, vouch: true},
		{line: `{"contained":[{"id":"o","resourceType":"Organization"}],"id":"p","managingOrganization":{"reference":"#o"},"resourceType":"Patient"}`, vouch: true, wantID: "p"},
		{line: `{"entry":[{"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"birthDate":"1970-01-01","resourceType":"Patient"}}],"resourceType":"Bundle","type":"collection"}`, vouch: true},
		{line: `{"extension":[{"url":"http://example.org/x","valueInteger":1}],"name":[{"given":["A","B"],"_given":[{"id":"f"},{"id":"g"}]}],"resourceType":"Patient"}`, vouch: true},
		{line: `{"id":"a","resourceType":"Patient","resourceType":"Patient"}`},
		{line: `{"id":"a"}`},
		{line: `{"id":"a","resourceType":"NoSuchType"}`},
		{line: `{"id":"a","resourceType":"Pat\u0069ent"}`},
		{line: `{"id":"a","resourceType":"Patient","_birthDate":{"id":"b"}}`, vouch: true, wantID: "a"},
		{line: `{"id":"a","resourceType":"Patient","gender":"robot"}`},
		{line: `{"id":"a",,"resourceType":"Patient"}`},
		{line: `{"id":[1,2}],"resourceType":"Patient"}`},
	} {
		checkVouch(t, fv, ref, tt.line, tt.vouch)
		if vd, ok := fv.validate([]byte(tt.line)); ok && vd.ID != tt.wantID {
			t.Errorf("%s: id %q, want %q", tt.line, vd.ID, tt.wantID)
		}
	}
}

// TestFastIntegerRange checks the ends of FHIR's integer (a signed 32-bit number) on both paths: the fast validator
// vouches for both ends, as the reference accepts them, and for nothing beyond.
func TestFastIntegerRange(t *testing.T) {
	fv, ref := newFast(t), valNew(t)
	for _, tt := range []struct {
		value string
		vouch bool
	}{
		{"2147483647", true}, {"-2147483648", true}, {"2147483648", false}, {"-2147483649", false}, {"-0", false},
	} {
		checkVouch(t, fv, ref, `{"resourceType":"Patient","multipleBirthInteger":`+tt.value+`}`, tt.vouch)
	}
}

func TestFastURICacheKeepsShortURIs(t *testing.T) {
	v, err := newFastValidator()
	if err != nil {
		t.Fatal(err)
	}
	short := []byte("http://example.org/fhir/StructureDefinition/x")
	long := []byte("data:text/plain;base64," + strings.Repeat("QUFB", uriCacheKeyBytes/4))
	for _, u := range [][]byte{short, long, short, long} {
		if !v.validURL(u) {
			t.Errorf("validURL(%.40s...) = false", u)
		}
	}
	if _, ok := v.uris.Get(short); !ok || v.uris.Len() != 1 {
		t.Errorf("the cache holds %d URIs, short one cached: %v; want only the short one", v.uris.Len(), ok)
	}
}

// TestFastURICacheBounded checks that the cache of URI verdicts starts afresh when it holds uriCacheSize of them,
// and that its verdicts, cached or not, are url.Parse's.
func TestFastURICacheBounded(t *testing.T) {
	v, err := newFastValidator()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2*uriCacheSize + 10 {
		u := []byte(fmt.Sprintf("http://example.org/%d", i))
		if i%3 == 0 {
			u = []byte(fmt.Sprintf("http://example.org/%%%d", i)) // a bad escape: url.Parse fails
		}
		for range 2 { // parsed, then cached
			_, err := url.Parse(string(u))
			if got := v.validURL(u); got != (err == nil) {
				t.Fatalf("validURL(%s) = %v, url.Parse: %v", u, got, err)
			}
		}
		if n := v.uris.Len(); n > uriCacheSize {
			t.Fatalf("the cache holds %d URIs, more than %d", n, uriCacheSize)
		}
	}
	if n := v.uris.Len(); n == 0 || n >= uriCacheSize {
		t.Errorf("the cache holds %d URIs after starting afresh", n)
	}
}

// TestFastExplain checks explain against the reference: the lines whose one fault is absent required elements
// get the reference's verdict and issues from the fast path, wherever the elements are (nested in arrays, in a
// choice, in a primitive's companion, in a nested resource); every other line is left to the reference.
func TestFastExplain(t *testing.T) {
	const obs = `"resourceType":"Observation","status":"final","code":{"text":"a"}`
	cases := []struct {
		name, line string
		explained  bool
	}{
		{"top level", `{"resourceType":"Observation","id":"o1","meta":{"versionId":"3"},"code":{"text":"a"}}`, true},
		{"two at top level", `{"resourceType":"Observation"}`, true},
		{"array items", `{` + obs + `,"component":[{"valueString":"x"},{"code":{"text":"b"}},{"valueString":"y"}]}`, true},
		{"extension url", `{"resourceType":"Patient","extension":[{"valueString":"x"}]}`, true},
		{"nested extension", `{` + obs + `,"extension":[{"url":"http://a","extension":[{"valueString":"x"}]}]}`, true},
		{"in a choice", `{` + obs + `,"valueQuantity":{"extension":[{"valueString":"x"}]}}`, true},
		{"deep in a choice", `{` + obs + `,"valueCodeableConcept":{"coding":[{"extension":[{}]}]}}`, true},
		{"in a companion", `{` + obs + `,"_effectiveDateTime":{"extension":[{"valueString":"x"}]}}`, true},
		{"in a companion array", `{"resourceType":"Patient","name":[{"given":["a","b"],"_given":[{"id":"g"},{"extension":[{"valueString":"x"}]}]}]}`, true},
		{"backbone element", `{"resourceType":"Patient","link":[{"type":"seealso"}]}`, true},
		{"narrative status", `{` + obs + `,"text":{"div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">a</div>"}}`, true},
		{"nested resource", `{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation","code":{"text":"a"}}},{"resource":{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/1"}}}]}`, true},
		{"required choice", `{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/1"}}`, true},
		{"only a companion", `{"resourceType":"Observation","_status":{"id":"x"},"code":{"text":"a"}}`, false},
		{"null", `{"resourceType":"Observation","code":{"text":"a"},"status":null}`, false},
		{"and a wrong id", `{"resourceType":"Observation","code":{"text":"a"},"extension":[{"url":"http://a","valueId":"a b"}]}`, false},
		{"and a contained resource lacking them too", `{"resourceType":"Patient","link":[{"type":"seealso"}],"contained":[{"resourceType":"Observation","code":{"text":"a"}}]}`, true},
		{"empty array", `{"resourceType":"Patient","link":[{"type":"seealso","other":[]}]}`, false},
	}
	fv, ref := newFast(t), valNew(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			line := []byte(tc.line)
			want := ref.Validate(line)
			if _, ok := fv.validate(line); ok {
				t.Fatalf("fast path vouches for the line; reference %v", want.Issues)
			}
			got, ok := fv.explain(line)
			if ok != tc.explained {
				t.Fatalf("explain ok = %v, want %v; reference %v", ok, tc.explained, want.Issues)
			}
			if !ok {
				return
			}
			if len(want.Issues) == 0 || !slices.Equal(got.Issues, want.Issues) || got.ID != want.ID || got.Version != want.Version ||
				got.ResourceType != want.ResourceType || !got.Known {
				t.Errorf("explain gives %+v\nreference        %+v", got, want)
			}
			for _, is := range got.Issues {
				if is.Code != codeRequired {
					t.Errorf("issue %+v is not a missing required element", is)
				}
			}
		})
	}
	// The validator is the same after explain: the next valid line builds its tree.
	valid := []byte(`{` + obs + `}`)
	if _, ok := fv.validate(valid); !ok || !fv.tree.holds(valid) {
		t.Errorf("after explain, a valid line is not vouched for with its tree (ok %v)", ok)
	}
}

// TestIDAndCodeRegexes checks isID and isCode against the regular expressions of FHIR R4 they implement, over
// every string of up to four bytes of an alphabet that has each class of byte, and ids around the length limit.
func TestIDAndCodeRegexes(t *testing.T) {
	id := regexp.MustCompile(`^[A-Za-z0-9\-\.]{1,64}$`)
	code := regexp.MustCompile(`^[^\s]+(\s[^\s]+)*$`)
	alphabet := []byte("aZ09-. \t\n\f\r\v_/\x00\xc3\xa9")
	var gen func(prefix []byte, n int)
	checked := 0
	gen = func(s []byte, n int) {
		checked++
		if got, want := isID(s), id.Match(s); got != want {
			t.Errorf("isID(%q) = %v, want %v", s, got, want)
		}
		if got, want := isCode(s), code.Match(s); got != want {
			t.Errorf("isCode(%q) = %v, want %v", s, got, want)
		}
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(append(s, c), n-1)
		}
	}
	gen(nil, 4)
	for _, n := range []int{63, 64, 65} {
		s := []byte(strings.Repeat("a-1.", 20)[:n])
		if got, want := isID(s), id.Match(s); got != want {
			t.Errorf("isID of %d bytes = %v, want %v", n, got, want)
		}
	}
	if checked < 50000 {
		t.Fatalf("checked %d strings", checked)
	}
}

// TestFastReferenceShapes checks the fast validator's reading of Reference.reference against the reference path:
// typed references with and without a version, of allowed and other targets, and every other count of slashes.
func TestFastReferenceShapes(t *testing.T) {
	fv, ref := newFast(t), valNew(t)
	for _, tt := range []struct {
		ref   string
		vouch bool
	}{
		{"Patient/1", true}, {"Group/g-1.2", true}, {"Patient/1/_history/2", true}, {"http://x.org/fhir/Patient/1", true},
		{"Practitioner/1", false}, {"Patient/1/_history/", false}, {"Patient/1/_history/a_b", false},
		{"Patient/1/_hist/2", true}, {"Patient/1/2", true}, {"Patient/", true}, {"/1", true}, {"/", true}, {"//", true},
		{"a/b/c/d/e", true}, {"Foo/1", true}, {"#c", true}, {"urn:uuid:0f1d2e3a-2c3b-4c1e-9f0e-0f4b0f1d2e3a", true},
	} {
		line := `{"resourceType":"Observation","status":"final","code":{"text":"t"},"subject":{"reference":"` + tt.ref + `"}}`
		checkVouch(t, fv, ref, line, tt.vouch)
	}
}
