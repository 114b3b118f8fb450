package reader

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// placed is a BlockLine without its bytes, for comparison.
type placed struct {
	Number, Block, Position int64
	Patient                 string
}

type issueAt struct {
	Line   int64
	Reason string // a fragment of the reason
}

func pat(id string) string { return fmt.Sprintf(`{"resourceType":"Patient","id":%q}`, id) }
func res(typ, id string) string {
	return fmt.Sprintf(`{"resourceType":%q,"id":%q,"meta":{"versionId":"1"},"code":{"text":"a \"quoted\" }"}}`, typ, id)
}
func header(ref string) string {
	return fmt.Sprintf(`{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":%q}}]}`, ref)
}

func scanBlocks(t *testing.T, content string, opts BlockOptions) (*BlockScanner, []placed) {
	t.Helper()
	bs := NewBlockScanner(NewScanner(strings.NewReader(content), "obj.ndjson", Options{}), opts)
	var out []placed
	for bs.Scan() {
		l := bs.Line()
		out = append(out, placed{Number: l.Number, Block: l.Block, Position: l.Position, Patient: l.Patient})
	}
	if err := bs.Err(); err != nil {
		t.Fatal(err)
	}
	return bs, out
}

func TestBlockScanner(t *testing.T) {
	tests := []struct {
		name       string
		lines      []string
		layout     Layout
		noFinalLF  bool
		wantLayout Layout
		want       []placed
		wantIssues []issueAt
		wantHeader int64
	}{
		{
			name:       "Google layout, auto",
			lines:      []string{pat("a"), res("Observation", "o1"), res("Organization", "org"), pat("b"), res("Organization", "org")},
			wantLayout: LayoutPatient,
			want:       []placed{{1, 1, 0, "a"}, {2, 1, 1, "a"}, {3, 1, 2, "a"}, {4, 2, 0, "b"}, {5, 2, 1, "b"}},
		},
		{
			name:       "per-type object, auto",
			lines:      []string{res("Observation", "o1"), res("Observation", "o2")},
			wantLayout: LayoutType,
			want:       []placed{{1, 0, 0, ""}, {2, 0, 0, ""}},
		},
		{
			name:       "Patients only, auto reads per type",
			lines:      []string{pat("a"), pat("b")},
			wantLayout: LayoutType,
			want:       []placed{{1, 0, 0, ""}, {2, 0, 0, ""}},
		},
		{
			name:       "Patients only, per-patient: one block each",
			lines:      []string{pat("a"), pat("b")},
			layout:     LayoutPatient,
			wantLayout: LayoutPatient,
			want:       []placed{{1, 1, 0, "a"}, {2, 2, 0, "b"}},
		},
		{
			name:       "opens with a non-Patient line: reported, the rest in blocks",
			lines:      []string{res("Organization", "org"), res("Observation", "o0"), pat("a"), res("Observation", "o1")},
			wantLayout: LayoutPatient,
			want:       []placed{{1, 0, 0, ""}, {2, 0, 0, ""}, {3, 1, 0, "a"}, {4, 1, 1, "a"}},
			wantIssues: []issueAt{{1, "does not open with a Patient"}},
		},
		{
			name:       "HL7 headers are not data",
			lines:      []string{header("Patient/a"), pat("a"), res("Observation", "o1"), header("https://x.test/fhir/Patient/b/_history/3"), res("Observation", "o2"), pat("b")},
			wantLayout: LayoutPatient,
			want:       []placed{{2, 1, 0, "a"}, {3, 1, 1, "a"}, {5, 2, 0, "b"}, {6, 2, 1, "b"}},
			wantHeader: 2,
		},
		{
			name:       "header naming a Patient that never follows",
			lines:      []string{header("Patient/a"), pat("a"), header("Patient/ghost"), pat("c"), res("Observation", "o1"), header("Patient/late")},
			wantLayout: LayoutPatient,
			want:       []placed{{2, 1, 0, "a"}, {4, 3, 0, "c"}, {5, 3, 1, "c"}},
			wantIssues: []issueAt{{3, "header names a Patient that does not follow"}, {6, "header names a Patient that does not follow"}},
			wantHeader: 3,
		},
		{
			name:       "a Parameters line that names no Patient is data",
			lines:      []string{pat("a"), `{"resourceType":"Parameters","parameter":[{"name":"x","valueString":"Patient/a"}]}`},
			wantLayout: LayoutPatient,
			want:       []placed{{1, 1, 0, "a"}, {2, 1, 1, "a"}},
		},
		{
			name:       "truncated last line",
			lines:      []string{pat("a"), res("Observation", "o1"), `{"resourceType":"Observation","id":"o2","code":{"te`},
			noFinalLF:  true,
			wantLayout: LayoutPatient,
			want:       []placed{{1, 1, 0, "a"}, {2, 1, 1, "a"}, {3, 1, 2, "a"}},
			wantIssues: []issueAt{{3, "last line is truncated"}},
		},
		{
			name:       "complete last line without a line feed is fine",
			lines:      []string{pat("a"), res("Observation", "o1")},
			noFinalLF:  true,
			wantLayout: LayoutPatient,
			want:       []placed{{1, 1, 0, "a"}, {2, 1, 1, "a"}},
		},
		{
			name:       "per-type layout ignores Patient lines",
			lines:      []string{pat("a"), res("Observation", "o1"), header("Patient/a")},
			layout:     LayoutType,
			wantLayout: LayoutType,
			want:       []placed{{1, 0, 0, ""}, {2, 0, 0, ""}, {3, 0, 0, ""}},
		},
		{
			name:       "id before resourceType, blank lines counted",
			lines:      []string{`{"id":"a","resourceType":"Patient"}`, "", res("Observation", "o1")},
			wantLayout: LayoutPatient,
			want:       []placed{{1, 1, 0, "a"}, {3, 1, 1, "a"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := strings.Join(tt.lines, "\n")
			if !tt.noFinalLF {
				content += "\n"
			}
			bs, got := scanBlocks(t, content, BlockOptions{Layout: tt.layout})
			if bs.Layout() != tt.wantLayout {
				t.Errorf("layout = %q, want %q", bs.Layout(), tt.wantLayout)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("lines =\n %v\nwant\n %v", got, tt.want)
			}
			if bs.Lines() != int64(len(tt.want)) || bs.Headers() != tt.wantHeader {
				t.Errorf("Lines, Headers = %d, %d; want %d, %d", bs.Lines(), bs.Headers(), len(tt.want), tt.wantHeader)
			}
			issues, total := bs.Issues()
			if total != int64(len(tt.wantIssues)) || len(issues) != len(tt.wantIssues) {
				t.Fatalf("issues = %+v (total %d), want %+v", issues, total, tt.wantIssues)
			}
			for i, w := range tt.wantIssues {
				is := issues[i]
				if is.Key != "obj.ndjson" || is.Line != w.Line || !strings.Contains(is.Reason, w.Reason) {
					t.Errorf("issue %d = %+v, want line %d with %q", i, is, w.Line, w.Reason)
				}
				for _, l := range tt.lines {
					if strings.Contains(l, "ghost") && strings.Contains(is.Reason, "ghost") {
						t.Errorf("issue %q repeats content", is.Reason)
					}
				}
			}
		})
	}
}

// TestBlockScannerSniffWindow: auto holds no more than its window, and lines read while deciding are replayed
// exactly once, in order.
func TestBlockScannerSniffWindow(t *testing.T) {
	var lines []string
	for i := range 10 {
		lines = append(lines, res("Observation", fmt.Sprint(i)))
	}
	lines = append(lines, pat("a"), res("Observation", "late"))
	content := strings.Join(lines, "\n") + "\n"
	bs, got := scanBlocks(t, content, BlockOptions{SniffLines: 4})
	if bs.Layout() != LayoutType {
		t.Errorf("layout = %q: the Patient lies beyond the 4-line window", bs.Layout())
	}
	if len(got) != 12 {
		t.Fatalf("%d lines, want 12", len(got))
	}
	for i, p := range got {
		if p.Number != int64(i+1) {
			t.Fatalf("line %d has number %d", i, p.Number)
		}
	}
	bs, _ = scanBlocks(t, content, BlockOptions{})
	if bs.Layout() != LayoutPatient {
		t.Errorf("layout = %q with the default window", bs.Layout())
	}
}

// TestBlockScannerSniffedBytes checks the bytes of replayed lines while sniff buffers are reused: scanners that
// sniff one after another and in turns, lines that outgrow a buffer, and a window bound by SniffBytes.
func TestBlockScannerSniffedBytes(t *testing.T) {
	object := func(tag string, n int) []string {
		var lines []string
		for i := range n {
			lines = append(lines, res("Observation", fmt.Sprintf("%s-%d-%s", tag, i, strings.Repeat("x", i*97))))
		}
		return lines
	}
	type scanner struct {
		bs   *BlockScanner
		want []string
		got  []string
	}
	start := func(tag string, n int, opts BlockOptions) *scanner {
		want := object(tag, n)
		r := strings.NewReader(strings.Join(want, "\n") + "\n")
		return &scanner{bs: NewBlockScanner(NewScanner(r, tag, Options{}), opts), want: want}
	}
	step := func(s *scanner) bool {
		if !s.bs.Scan() {
			return false
		}
		s.got = append(s.got, string(s.bs.Line().Bytes))
		return true
	}
	check := func(s *scanner) {
		t.Helper()
		if err := s.bs.Err(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.got, s.want) {
			t.Errorf("%d lines read back, want %d: the bytes differ", len(s.got), len(s.want))
		}
	}
	for round := range 3 {
		// Two scanners in turns, each sniffing while the other replays; then one that sniffs a short window
		// (SniffBytes) and reads on past it.
		a, b := start(fmt.Sprint("a", round), 40, BlockOptions{}), start(fmt.Sprint("b", round), 25, BlockOptions{})
		for more := true; more; {
			more = step(a)
			more = step(b) || more
		}
		check(a)
		check(b)
		c := start(fmt.Sprint("c", round), 30, BlockOptions{SniffBytes: 2000})
		for step(c) {
		}
		check(c)
	}
}

func TestParseLayout(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		want Layout
		ok   bool
	}{
		{name: "empty", in: "", want: LayoutAuto, ok: true},
		{name: "auto", in: "auto", want: LayoutAuto, ok: true},
		{name: "per-type", in: "per-type", want: LayoutType, ok: true},
		{name: "per-patient", in: "per-patient", want: LayoutPatient, ok: true},
		{name: "unknown", in: "patient"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLayout(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("ParseLayout(%q) = %q, %v", tt.in, got, err)
			}
		})
	}
}

// TestBlockScannerGroupByPatient reads the shared per-Patient export: 27 blocks, every line in one.
func TestBlockScannerGroupByPatient(t *testing.T) {
	path := filepath.Join("..", "..", "shared", "data", "synthea-group-by-patient", "Patient.ndjson")
	f, err := os.Open(path)
	if err != nil {
		t.Skipf("shared data absent: %v", err)
	}
	defer f.Close()
	bs := NewBlockScanner(NewScanner(f, "Patient.ndjson", Options{}), BlockOptions{})
	var lines, patients int64
	for bs.Scan() {
		l := bs.Line()
		lines++
		if l.Block == 0 || l.Patient == "" {
			t.Fatalf("line %d is in no block", l.Number)
		}
		if l.Position == 0 {
			patients++
		}
	}
	if bs.Err() != nil {
		t.Fatal(bs.Err())
	}
	_, issues := bs.Issues()
	if bs.Layout() != LayoutPatient || lines != 10655 || bs.Blocks() != 27 || patients != 27 || issues != 0 {
		t.Errorf("layout %q, %d lines, %d blocks, %d at position 0, %d issues; want per-patient, 10655, 27, 27, 0",
			bs.Layout(), lines, bs.Blocks(), patients, issues)
	}
}

// TestFreeListBound: a free list hands back what was put, and keeps no more than freeListBytes of buffers, so that
// the sniff buffers of objects of large resources are left to the collector.
func TestFreeListBound(t *testing.T) {
	var f freeList
	small := make([]byte, 0, 1<<20)
	f.put(&small)
	big := make([]byte, 0, freeListBytes)
	f.put(&big) // over the bound with small kept: dropped
	if f.bytes != cap(small) || len(f.free) != 1 {
		t.Fatalf("keeps %d buffers of %d bytes, want only the 1 MiB one", len(f.free), f.bytes)
	}
	if got := f.get(); got != &small {
		t.Errorf("get returned a buffer of %d bytes, want the one put", cap(*got))
	}
	if f.bytes != 0 {
		t.Errorf("an empty list counts %d bytes", f.bytes)
	}
	if got := f.get(); got == nil || cap(*got) != 0 {
		t.Errorf("an empty list returned %v, want a new empty buffer", got)
	}
}
