package pipeline_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/sinks"
)

// canary is planted in every hostile line. It may reach the tables (in a valid line) and the quarantine files
// (the line itself), never the manifest, an issue's path or detail, or an error.
const canary = "PHI-CANARY-7f3a9c"

// hostilePatient is a valid Patient whose family name holds the canary and pad.
func hostilePatient(id, pad string) string {
	return `{"resourceType":"Patient","id":"` + id + `","name":[{"family":"` + canary + pad + `"}]}`
}

// sizedPatient is a valid Patient line of exactly n bytes.
func sizedPatient(id string, n int) string {
	short := hostilePatient(id, "")
	if n < len(short) {
		panic(fmt.Sprintf("a Patient line needs at least %d bytes", len(short)))
	}
	return hostilePatient(id, strings.Repeat("a", n-len(short)))
}

// patients are n distinct valid Patient lines (with enough variety that gzip does not shrink them to nothing).
func patients(prefix string, n int) []string {
	lines := make([]string, n)
	for i := range lines {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s-%d", prefix, i))
		lines[i] = hostilePatient(fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("-%x", sum))
	}
	return lines
}

func ndjson(lines ...string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }

func gzipped(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// hostileWant is what a run over one class of hostile input must report.
type hostileWant struct {
	lines, valid, rejected, unparsed int64
	// codes counts the rejected lines by the code of their first issue.
	codes map[string]int
	// damaged maps each object that cannot be read to its end to a word its reason must hold. Its lines are those
	// before the damage, as many as a gzip reader of the object yields whole (lines then is -1: not fixed here).
	damaged map[string]string
}

type hostileCase struct {
	name  string
	files func(t testing.TB) map[string][]byte
	// write, when set instead of files, writes the objects into dir itself.
	write  func(t testing.TB, dir string)
	opts   pipeline.Options
	want   hostileWant
	heavy  bool // skipped in -short
	inline bool // not part of the combined run (its own options or size)
}

func hostileCases() []hostileCase {
	gzLines := patients("gz", 400)
	gzData := ndjson(gzLines...)
	return []hostileCase{
		{
			name: "malformed JSON",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{"malformed.ndjson": ndjson(
					hostilePatient("ok-1", ""),
					`{"resourceType":"Patient","id":"m1","name":[{"family":"`+canary+`"}]`,
					`{"resourceType":"Patient",,"name":"`+canary+`"}`,
					`not json at all `+canary,
					`{"resourceType":"Patient","name":"`+canary+`"}}`,
					`{"resourceType":"Patient","name":'`+canary+`'}`,
					hostilePatient("ok-2", ""),
				)}
			},
			want: hostileWant{lines: 7, valid: 2, rejected: 5, unparsed: 5, codes: map[string]int{"structure": 5}},
		},
		{
			name: "invalid UTF-8",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{"utf8.ndjson": ndjson(
					hostilePatient("u1", "\xff\xfe"),                 // bytes that are never UTF-8
					hostilePatient("u2", "\xc0\xaf"),                 // an overlong encoding of '/'
					hostilePatient("u3", "\xed\xa0\x80"),             // a UTF-16 surrogate encoded as UTF-8
					hostilePatient("u4", "\xe2\x82"),                 // a truncated sequence
					"\xff\xfe{\x00\"\x00r\x00"+canary,                // UTF-16LE with its BOM
					hostilePatient("ok-1", "\u00e9\u4e2d\U0001f600"), // valid multi-byte text stays valid
				)}
			},
			want: hostileWant{lines: 6, valid: 1, rejected: 5, unparsed: 5, codes: map[string]int{"structure": 5}},
		},
		{
			name: "NUL byte",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{"nul.ndjson": ndjson(
					hostilePatient("n1", "\x00"),
					`{"resourceType":"Patient",`+"\x00"+`"id":"n2","name":[{"family":"`+canary+`"}]}`,
					"\x00",
					hostilePatient("ok-1", ""),
				)}
			},
			want: hostileWant{lines: 4, valid: 1, rejected: 3, unparsed: 3, codes: map[string]int{"structure": 3}},
		},
		{
			name:   "line one byte over the limit",
			inline: true,
			opts:   pipeline.Options{MaxLineBytes: 4096},
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{
					"limit.ndjson": ndjson(
						sizedPatient("at-limit", 4096),
						sizedPatient("over", 4097),
						sizedPatient("at-limit-crlf", 4096)+"\r",
						sizedPatient("over-crlf", 4097)+"\r",
					),
					"limit-last.ndjson": []byte(sizedPatient("over-unterminated", 4097)),
				}
			},
			want: hostileWant{lines: 5, valid: 2, rejected: 3, unparsed: 3, codes: map[string]int{"too-long": 3}},
		},
		{
			name:   "64 MiB line",
			heavy:  true,
			inline: true,
			write: func(t testing.TB, dir string) {
				// One byte over the default limit, written as it is made: the test holds none of it.
				writeBigLine(t, filepath.Join(dir, "big.ndjson"), false, 64<<20+1,
					hostilePatient("before", ""), hostilePatient("after", ""))
				writeBigLine(t, filepath.Join(dir, "big.ndjson.gz"), true, 64<<20+1, "", hostilePatient("after-gz", ""))
			},
			want: hostileWant{lines: 5, valid: 3, rejected: 2, unparsed: 2, codes: map[string]int{"too-long": 2}},
		},
		{
			name: "deeply nested JSON",
			files: func(testing.TB) map[string][]byte {
				const depth = 100_000
				arrays := strings.Repeat("[", depth) + `"` + canary + `"` + strings.Repeat("]", depth)
				objects := strings.Repeat(`{"a":`, depth) + `"` + canary + `"` + strings.Repeat("}", depth)
				return map[string][]byte{"deep.ndjson": ndjson(
					`{"resourceType":"Basic","code":{"text":"t"},"extension":`+arrays+`}`,
					`{"resourceType":"Basic","code":{"text":"t"},"extension":[`+objects+`]}`,
					strings.Repeat("[", depth)+canary, // unbalanced, and not JSON
					arrays,
					hostilePatient("ok-1", ""),
				)}
			},
			want: hostileWant{lines: 5, valid: 1, rejected: 4, unparsed: 4, codes: map[string]int{"too-long": 4}},
		},
		{
			name: "duplicate keys",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{"dup.ndjson": ndjson(
					`{"resourceType":"Patient","id":"d1","gender":"male","gender":"female","name":[{"family":"`+canary+`"}]}`,
					`{"resourceType":"Patient","id":"d2","name":[{"family":"a","family":"`+canary+`"}]}`,
					`{"resourceType":"Patient","id":"d3","id":"d4","name":[{"family":"`+canary+`"}]}`,
					`{"resourceType":"Basic","resourceType":"Patient","id":"d5","name":[{"family":"`+canary+`"}]}`,
					`{"resourceType":"Patient","id":"d6","name":[{"family":"`+canary+`"}],"name":[]}`,
					hostilePatient("ok-1", ""),
				)}
			},
			// A resource with two resourceTypes has none that can be trusted: it is unparsed.
			want: hostileWant{lines: 6, valid: 1, rejected: 5, unparsed: 1, codes: map[string]int{"structure": 5}},
		},
		{
			name: "resourceType unknown to R4",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{"unknown.ndjson": ndjson(
					`{"resourceType":"Frobnication","id":"f1","note":"`+canary+`"}`,
					`{"resourceType":"patient","id":"f2","name":[{"family":"`+canary+`"}]}`,
					`{"resourceType":"DomainResource","id":"f3","text":"`+canary+`"}`,
					`{"resourceType":"MedicinalProductDefinition","id":"f4","name":"`+canary+`"}`, // R5 only
					`{"resourceType":"`+canary+`","id":"f5"}`,
					`{"resourceType":"../../_manifest","id":"f6"}`,
					hostilePatient("ok-1", ""),
				)}
			},
			want: hostileWant{lines: 7, valid: 1, rejected: 6, unparsed: 6, codes: map[string]int{"not-supported": 6}},
		},
		{
			name: "missing or non-string resourceType, JSON but not an object",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{"shape.ndjson": ndjson(
					`{"id":"s1","name":[{"family":"`+canary+`"}]}`,
					`{"resourceType":42,"name":"`+canary+`"}`,
					`{"resourceType":null,"name":"`+canary+`"}`,
					`{"resourceType":["Patient"],"name":"`+canary+`"}`,
					`{"resourceType":{"`+canary+`":1}}`,
					`{}`,
					`["`+canary+`"]`,
					`"`+canary+`"`,
					`42`,
					`null`,
					`true`,
					`[{"resourceType":"Patient","id":"s2","name":[{"family":"`+canary+`"}]}]`,
					hostilePatient("ok-1", ""),
				)}
			},
			want: hostileWant{lines: 13, valid: 1, rejected: 12, unparsed: 12, codes: map[string]int{"structure": 12}},
		},
		{
			name: "empty files",
			files: func(t testing.TB) map[string][]byte {
				return map[string][]byte{
					"empty.ndjson":         {},
					"blank.ndjson":         []byte("\n\n \t\r\n\r\n"),
					"empty.ndjson.gz":      gzipped(t, nil),
					"zero-bytes.ndjson.gz": {},
				}
			},
			want: hostileWant{},
		},
		{
			name: "no final newline",
			files: func(testing.TB) map[string][]byte {
				return map[string][]byte{
					"last.ndjson":      []byte(hostilePatient("l1", "") + "\n" + hostilePatient("l2", "")),
					"one.ndjson":       []byte(hostilePatient("l3", "")),
					"truncated.ndjson": []byte(hostilePatient("l4", "") + "\n" + `{"resourceType":"Patient","id":"l5","name":[{"fam`),
					"crlf-last.ndjson": []byte(hostilePatient("l6", "") + "\r\n" + hostilePatient("l7", "") + "\r"),
				}
			},
			want: hostileWant{lines: 7, valid: 6, rejected: 1, unparsed: 1, codes: map[string]int{"structure": 1}},
		},
		{
			name: "CRLF and BOM",
			files: func(t testing.TB) map[string][]byte {
				crlf := []byte("\ufeff" + hostilePatient("c1", "") + "\r\n" + hostilePatient("c2", "") + "\r\n\r\n" +
					`{"resourceType":"Patient",` + "\r" + `"id":"c3"}` + "\r\n")
				return map[string][]byte{
					"crlf.ndjson":    crlf,
					"crlf.ndjson.gz": gzipped(t, crlf),
					"bom-inside.ndjson": ndjson(
						hostilePatient("c4", ""),
						"\ufeff"+hostilePatient("c5", ""), // a BOM is allowed only at the start of the object
						"\ufeff\ufeff"+hostilePatient("c6", ""),
					),
				}
			},
			want: hostileWant{lines: 9, valid: 7, rejected: 2, unparsed: 2, codes: map[string]int{"structure": 2}},
		},
		{
			name: "corrupt or truncated gzip",
			files: func(t testing.TB) map[string][]byte {
				gz := gzipped(t, gzData)
				badCRC := bytes.Clone(gz)
				badCRC[len(badCRC)-8] ^= 0xff
				flipped := bytes.Clone(gz)
				for i := len(flipped) / 2; i < len(flipped)/2+64; i++ {
					flipped[i] ^= 0x55
				}
				header := bytes.Clone(gz[:10])
				header[2] = 9 // compression method 9 does not exist
				return map[string][]byte{
					"good.ndjson.gz":               gz,
					"half.ndjson.gz":               gz[:len(gz)/2],
					"trailer-cut.ndjson.gz":        gz[:len(gz)-4],
					"bad-crc.ndjson.gz":            badCRC,
					"flipped.ndjson.gz":            flipped,
					"reserved-block.ndjson.gz":     append(bytes.Clone(gz[:10]), 0xff, 0xff, 0xff),
					"bad-method.ndjson.gz":         append(header, gz[10:]...),
					"magic-only.ndjson.gz":         {0x1f, 0x8b},
					"trailing-junk.ndjson.gz":      append(bytes.Clone(gz), []byte("junk "+canary+"\n")...),
					"plain-after.ndjson":           ndjson(hostilePatient("after-gz", "")),
					"named-gz-but-plain.ndjson.gz": ndjson(hostilePatient("plain-gz", "")),
				}
			},
			want: hostileWant{lines: -1, damaged: map[string]string{
				"half.ndjson.gz":           "truncated",
				"trailer-cut.ndjson.gz":    "truncated",
				"bad-crc.ndjson.gz":        "checksum",
				"flipped.ndjson.gz":        "corrupt",
				"reserved-block.ndjson.gz": "corrupt",
				"bad-method.ndjson.gz":     "header",
				"magic-only.ndjson.gz":     "truncated",
				"trailing-junk.ndjson.gz":  "header",
			}},
		},
	}
}

// TestHostileInput runs each class of hostile input on its own: every line is either valid or quarantined
// verbatim with a coded reason, an object that cannot be read to its end is recorded as such, the run publishes,
// and the canary reaches neither the manifest nor any issue.
func TestHostileInput(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			if tc.heavy && testing.Short() {
				t.Skip("a 64 MiB line is heavy; skipped in -short")
			}
			in := t.TempDir()
			if tc.write != nil {
				tc.write(t, in)
			} else {
				writeHostile(t, in, tc.files(t))
			}
			m, dst := runHostile(t, in, tc.opts)
			checkHostile(t, in, dst, m, tc.want)
		})
	}
}

// TestHostileInputTogether runs every light class in one run beside a valid object: the run goes on past all of
// them and its totals are the sums of the classes run alone.
func TestHostileInputTogether(t *testing.T) {
	in := t.TempDir()
	var want sinks.Totals
	damaged := map[string]string{}
	// The sums come from running each class alone again; -short (the race pass) keeps the checks of the run
	// together and skips the sums.
	sums := !testing.Short()
	for i, tc := range hostileCases() {
		if tc.inline {
			continue
		}
		files := tc.files(t)
		if sums {
			alone := t.TempDir()
			writeHostile(t, alone, files)
			m, _ := runHostile(t, alone, tc.opts)
			want.Lines += m.Totals.Lines
			want.Valid += m.Totals.Valid
			want.Rejected += m.Totals.Rejected
			want.Unparsed += m.Totals.Unparsed
			want.Rows += m.Totals.Rows
			want.RejectedInputs += m.Totals.RejectedInputs
		}
		prefixed := map[string][]byte{}
		for name, data := range files {
			key := fmt.Sprintf("c%02d-%s", i, name)
			prefixed[key] = data
			if word, ok := tc.want.damaged[name]; ok {
				damaged[key] = word
			}
		}
		writeHostile(t, in, prefixed)
	}
	valid := patients("valid", 50)
	writeHostile(t, in, map[string][]byte{"valid.ndjson": ndjson(valid...)})
	want.Lines += 50
	want.Valid += 50
	want.Rows += 50

	for _, validator := range []string{"reference", "fast"} {
		t.Run(validator, func(t *testing.T) {
			m, dst := runHostile(t, in, pipeline.Options{Validator: validator})
			got := m.Totals
			if validator == "reference" && got.ValidByReference != got.Valid {
				t.Errorf("the reference validated %d valid lines of %d", got.ValidByReference, got.Valid)
			}
			got.Links, got.Duplicates, got.BlockIssues, got.ValidByReference = 0, 0, 0, 0
			if sums && got != want {
				t.Errorf("totals together = %+v\nwant the sums of the classes alone %+v", got, want)
			}
			checkHostile(t, in, dst, m, hostileWant{lines: -1, damaged: damaged})
		})
	}
}

// primitiveCarriers wraps each google-fhir-primitives type in a Basic resource: an extension's value[x] of that
// type, xhtml as the narrative's div.
var primitiveCarriers = map[string]string{
	"base64_binary": "valueBase64Binary", "boolean": "valueBoolean", "canonical": "valueCanonical",
	"code": "valueCode", "date": "valueDate", "date_time": "valueDateTime", "decimal": "valueDecimal",
	"id": "valueId", "instant": "valueInstant", "integer": "valueInteger", "markdown": "valueMarkdown",
	"oid": "valueOid", "positive_int": "valuePositiveInt", "reference": "valueReference", "string": "valueString",
	"time": "valueTime", "unsigned_int": "valueUnsignedInt", "uri": "valueUri", "url": "valueUrl",
	"uuid": "valueUuid", "xhtml": "",
}

// TestHostileSharedInvalid runs every case of ../shared/data/invalid: the HL7 validator's test cases (one
// resource a line), and google/fhir's primitive values both as lines of their own (JSON that is not an object, or
// not JSON) and carried in a Basic resource. Every line is accounted for and every reject has a coded reason; an
// invalid primitive's value never appears in an issue.
func TestHostileSharedInvalid(t *testing.T) {
	if testing.Short() {
		t.Skip("all of ../shared/data/invalid; skipped in -short (TestInvalidCases keeps the HL7 cases)")
	}
	cases := sharedDir(t, "invalid/fhir-test-cases/cases")
	prims := sharedDir(t, "invalid/google-fhir-primitives")
	files := map[string][]byte{}

	entries, err := os.ReadDir(cases)
	if err != nil {
		t.Fatal(err)
	}
	var hl7 bytes.Buffer
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(cases, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		// One line each; line breaks are only whitespace between tokens, so malformed JSON stays malformed.
		data = bytes.TrimPrefix(data, []byte("\ufeff"))
		hl7.Write(bytes.Join(bytes.Fields(data), []byte(" ")))
		hl7.WriteByte('\n')
	}
	files["fhir-test-cases.ndjson"] = hl7.Bytes()

	names, err := filepath.Glob(filepath.Join(prims, "*.ndjson"))
	if err != nil || len(names) != 42 {
		t.Fatalf("want 42 primitive files, got %d (%v)", len(names), err)
	}
	var raw, invalid int
	var invalidValues []string
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Base(name)
		typ, label, _ := strings.Cut(strings.TrimSuffix(base, ".ndjson"), ".")
		carrier, ok := primitiveCarriers[typ]
		if !ok {
			t.Fatalf("%s: no carrier for %q", base, typ)
		}
		files["raw-"+base] = data
		var wrapped bytes.Buffer
		for v := range strings.Lines(string(data)) {
			v = strings.TrimRight(v, "\r\n")
			if strings.TrimSpace(v) == "" {
				continue
			}
			raw++
			if typ == "xhtml" {
				wrapped.WriteString(`{"resourceType":"Basic","code":{"text":"t"},"text":{"status":"generated","div":` + v + "}}\n")
			} else {
				wrapped.WriteString(`{"resourceType":"Basic","code":{"text":"t"},"extension":[{"url":"http://example.org/p","` +
					carrier + `":` + v + "}]}\n")
			}
			if label == "invalid" {
				invalid++
				var s string
				if json.Unmarshal([]byte(v), &s) == nil && len(s) >= 6 {
					invalidValues = append(invalidValues, s)
				}
			}
		}
		files["wrapped-"+base] = wrapped.Bytes()
	}

	in := t.TempDir()
	writeHostile(t, in, files)
	m, dst := runHostile(t, in, pipeline.Options{})
	checkHostile(t, in, dst, m, hostileWant{lines: -1})

	var rawRejected, wrappedInvalidRejected int64
	perObject := map[string]int64{}
	for _, l := range readLines(t, dst, "out/_rejects/errors.ndjson") {
		var e errorEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		perObject[e.Source]++
		for _, is := range e.Issues {
			for _, v := range invalidValues {
				if strings.Contains(is.Detail, v) || strings.Contains(is.Path, v) {
					t.Errorf("%s line %d: issue %+v repeats the value %q", e.Source, e.Line, is, v)
				}
			}
		}
	}
	for obj, n := range perObject {
		switch {
		case strings.HasPrefix(obj, "raw-"):
			rawRejected += n
		case strings.HasPrefix(obj, "wrapped-") && strings.Contains(obj, ".invalid."):
			wrappedInvalidRejected += n
		}
	}
	if rawRejected != int64(raw) {
		t.Errorf("%d of %d bare primitive values rejected, want all (none is a resource)", rawRejected, raw)
	}
	// google/fhir/go v0.7.4 accepts three values its own data calls invalid (a blank canonical and url, an empty
	// string); transform's TestValidatePrimitives lists them.
	if wrappedInvalidRejected != int64(invalid-3) {
		t.Errorf("%d of %d invalid primitives rejected, want all but the 3 known leniencies", wrappedInvalidRejected, invalid)
	}
	if m.Totals.Lines != int64(len(entries)+2*raw) {
		t.Errorf("lines = %d, want %d HL7 cases and %d primitive values twice", m.Totals.Lines, len(entries), raw)
	}
}

// TestReadErrorStopsTheRun: a failure to read an object that is not damage of its content (here the object is gone)
// fails the run cleanly, naming the object, and publishes nothing.
func TestReadErrorStopsTheRun(t *testing.T) {
	in := t.TempDir()
	writeHostile(t, in, map[string][]byte{"a.ndjson": ndjson(hostilePatient("a", ""))})
	dst := memBucket(t)
	_, err := pipeline.Run(context.Background(),
		pipeline.Source{Bucket: openDir(t, in), Name: "gone", Objects: []reader.Object{{Key: "a.ndjson"}, {Key: "gone.ndjson.gz"}}},
		pipeline.Sink{Bucket: dst, Prefix: "out"}, pipeline.Options{Allocator: checked(t)})
	if err == nil || !strings.Contains(err.Error(), "gone.ndjson.gz") {
		t.Fatalf("err = %v, want a failure naming gone.ndjson.gz", err)
	}
	if strings.Contains(err.Error(), canary) {
		t.Error("the error holds the canary")
	}
	if keys := listKeys(t, dst, "out/"); len(keys) != 0 {
		t.Errorf("a failed run left %v", keys)
	}
}

// writeBigLine writes, streaming, the object path: the line before (if any), a valid Patient of exactly n bytes,
// the line after, gzipped when gz.
func writeBigLine(t testing.TB, path string, gz bool, n int, before, after string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = zw
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if before != "" {
		bw.WriteString(before + "\n")
	}
	head := `{"resourceType":"Patient","id":"big","name":[{"family":"` + canary
	tail := `"}]}`
	bw.WriteString(head)
	pad := bytes.Repeat([]byte("a"), 1<<16)
	for left := n - len(head) - len(tail); left > 0; left -= len(pad) {
		bw.Write(pad[:min(left, len(pad))])
	}
	bw.WriteString(tail + "\n" + after + "\n")
	err = bw.Flush()
	if zw != nil && err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func writeHostile(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runHostile converts dir into a local output directory with a leak-checked allocator and returns the manifest
// and the output bucket.
func runHostile(t *testing.T, dir string, opts pipeline.Options) (*sinks.Manifest, *blob.Bucket) {
	t.Helper()
	dst := openDir(t, t.TempDir())
	opts.Allocator = checked(t)
	opts.Now = fixedClock()
	if opts.Workers == 0 {
		opts.Workers = 2
	}
	m, err := pipeline.Run(context.Background(), pipeline.Source{Bucket: openDir(t, dir), Name: "hostile"},
		pipeline.Sink{Bucket: dst, Prefix: "out"}, opts)
	if err != nil {
		if strings.Contains(err.Error(), canary) {
			t.Errorf("the run's error holds the canary")
		}
		t.Fatalf("the run must go on past hostile input: %v", err)
	}
	return m, dst
}

type errorEntry struct {
	Source       string `json:"source"`
	Line         int64  `json:"line"`
	Object       bool   `json:"object"`
	ResourceType string `json:"resourceType"`
	Issues       []sinks.Issue
}

func checkHostile(t *testing.T, in string, dst *blob.Bucket, m *sinks.Manifest, want hostileWant) {
	t.Helper()
	ctx := context.Background()

	// Accounting.
	tot := m.Totals
	if tot.Lines != tot.Valid+tot.Rejected {
		t.Errorf("lines %d != valid %d + rejected %d", tot.Lines, tot.Valid, tot.Rejected)
	}
	if tot.Rows != tot.Valid-tot.Duplicates {
		t.Errorf("rows %d != valid %d - duplicates %d", tot.Rows, tot.Valid, tot.Duplicates)
	}
	if want.lines >= 0 {
		got := [4]int64{tot.Lines, tot.Valid, tot.Rejected, tot.Unparsed}
		if w := [4]int64{want.lines, want.valid, want.rejected, want.unparsed}; got != w {
			t.Errorf("lines, valid, rejected, unparsed = %v, want %v", got, w)
		}
	}
	var rows, inputLines int64
	for typ, r := range m.Resources {
		for _, f := range r.Files {
			rows += parquetRows(t, dst, "out/"+f.Key)
		}
		if !isTypeName(typ) {
			t.Errorf("the manifest has an entry for the type %q", typ)
		}
	}
	if rows != tot.Rows {
		t.Errorf("parquet rows read back = %d, want %d", rows, tot.Rows)
	}

	sources := map[string]map[int64][32]byte{}
	source := func(key string) map[int64][32]byte {
		if _, ok := sources[key]; !ok {
			sources[key] = sourceLines(t, filepath.Join(in, key))
		}
		return sources[key]
	}

	// Damaged objects: recorded with a reason, their lines up to the damage kept.
	damaged := 0
	for _, inp := range m.Inputs {
		inputLines += inp.Lines
		word, isDamaged := want.damaged[inp.Object]
		switch {
		case isDamaged && inp.Error == "":
			t.Errorf("%s: no error recorded for a damaged object", inp.Object)
		case !isDamaged && inp.Error != "":
			t.Errorf("%s: error %q recorded for a sound object", inp.Object, inp.Error)
		case isDamaged:
			damaged++
			if !strings.Contains(inp.Error, word) {
				t.Errorf("%s: error %q does not say %q", inp.Object, inp.Error, word)
			}
		}
		if n := int64(len(source(inp.Object))); n != inp.Lines {
			t.Errorf("%s: %d lines counted, want the %d whole lines it yields", inp.Object, inp.Lines, n)
		}
	}
	if inputLines != tot.Lines {
		t.Errorf("input lines %d != total lines %d", inputLines, tot.Lines)
	}
	if tot.RejectedInputs != int64(damaged) || damaged != len(want.damaged) {
		t.Errorf("rejected inputs = %d, %d objects recorded; want %d", tot.RejectedInputs, damaged, len(want.damaged))
	}

	// errors.ndjson: one entry per rejected line and per damaged object, each with a coded issue and no canary.
	var entries []errorEntry
	if tot.Rejected > 0 || damaged > 0 {
		for _, l := range readLines(t, dst, "out/_rejects/errors.ndjson") {
			var e errorEntry
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("errors.ndjson line: %v", err)
			}
			entries = append(entries, e)
		}
	}
	codes := map[string]int{}
	wantRaw := map[[32]byte]int{}
	objects := 0
	for _, e := range entries {
		if len(e.Issues) == 0 || e.Issues[0].Code == "" || e.Issues[0].Detail == "" {
			t.Errorf("%s line %d: reject without a coded reason: %+v", e.Source, e.Line, e.Issues)
		}
		for _, is := range e.Issues {
			if strings.Contains(is.Path+is.Detail+e.Source, canary) {
				t.Errorf("%s line %d: an issue holds the canary", e.Source, e.Line)
			}
		}
		if e.Object {
			objects++
			if _, ok := want.damaged[e.Source]; !ok {
				t.Errorf("errors.ndjson rejects the object %s", e.Source)
			}
			continue
		}
		if len(e.Issues) > 0 {
			codes[e.Issues[0].Code]++
		}
		sum, ok := source(e.Source)[e.Line]
		if !ok {
			t.Errorf("%s: rejected line %d is blank or absent", e.Source, e.Line)
			continue
		}
		wantRaw[sum]++
	}
	if int64(len(entries)-objects) != tot.Rejected || objects != damaged {
		t.Errorf("errors.ndjson: %d lines and %d objects, want %d and %d", len(entries)-objects, objects, tot.Rejected, damaged)
	}
	if want.codes != nil && !equalCounts(codes, want.codes) {
		t.Errorf("issue codes = %v, want %v", codes, want.codes)
	}

	// Quarantine: exactly the rejected lines, byte for byte.
	gotRaw := map[[32]byte]int{}
	for _, f := range m.Rejects {
		if f.Key == "_rejects/errors.ndjson" {
			continue
		}
		r, err := dst.NewReader(ctx, "out/"+f.Key, nil)
		if err != nil {
			t.Fatal(err)
		}
		forEachLine(r, false, func(_ int64, sum [32]byte) { gotRaw[sum]++ })
		r.Close()
	}
	if !equalCounts(gotRaw, wantRaw) {
		t.Errorf("quarantine holds %d distinct lines, want the %d rejected source lines verbatim", len(gotRaw), len(wantRaw))
	}

	// The manifest, as published, never holds the canary.
	data, err := dst.ReadAll(ctx, "out/_manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(canary)) {
		t.Errorf("the manifest holds the canary")
	}
}

func isTypeName(s string) bool {
	for i, c := range s {
		if !(c >= 'A' && c <= 'Z' || i > 0 && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9')) {
			return false
		}
	}
	return s != ""
}

func equalCounts[K comparable](a, b map[K]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// sourceLines returns the SHA-256 of each non-blank line of the object at path, by line number, read the way
// the reader reads: gunzipped when it starts with the gzip magic, a UTF-8 BOM dropped at its start, one CR
// dropped before each LF and at the end. A gzip error ends the lines: those before it are what a run can keep.
func sourceLines(t *testing.T, path string) map[int64][32]byte {
	t.Helper()
	lines := map[int64][32]byte{}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if head, _ := br.Peek(2); bytes.Equal(head, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return lines
		}
		r = zr
	}
	forEachLine(r, true, func(n int64, sum [32]byte) { lines[n] = sum })
	return lines
}

// forEachLine streams r line by line without holding a line, and calls fn with the line number and the SHA-256
// of every line that is not blank (only spaces, tabs and CRs). Source lines (source) lose a UTF-8 BOM at the start
// of the stream and one CR before their end; quarantined lines are taken as they are. A final line without LF
// counts; a read error other than EOF ends the lines, dropping the partial one.
func forEachLine(r io.Reader, source bool, fn func(n int64, sum [32]byte)) {
	br := bufio.NewReaderSize(r, 64<<10)
	var n int64
	for {
		h := sha256.New()
		size := 0
		blank, cr := true, false
		var err error
		for {
			var chunk []byte
			chunk, err = br.ReadSlice('\n')
			if source && n == 0 && size == 0 {
				chunk = bytes.TrimPrefix(chunk, []byte("\ufeff"))
			}
			size += len(chunk)
			body := bytes.TrimSuffix(chunk, []byte("\n"))
			if cr {
				h.Write([]byte{'\r'})
				cr = false
			}
			if source && len(body) > 0 && body[len(body)-1] == '\r' {
				body, cr = body[:len(body)-1], true // dropped if the line ends here
			}
			h.Write(body)
			if blank && len(bytes.Trim(body, " \t\r")) > 0 {
				blank = false
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && err != io.EOF || size == 0 {
			return
		}
		n++
		if !blank {
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			fn(n, sum)
		}
		if err == io.EOF {
			return
		}
	}
}
