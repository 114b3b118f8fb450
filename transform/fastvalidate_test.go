package transform

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// parityCounts are the outcome of comparing both paths over a set of lines.
type parityCounts struct {
	lines, refValid, fastValid int
	// wrong counts lines the fast validator accepted and the reference rejects: the one disagreement the design
	// allows none of (everything else the fast path hands to the reference path).
	wrong int
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
}

func newFast(t testing.TB) *fastValidator {
	t.Helper()
	fv, err := newFastValidator()
	if err != nil {
		t.Fatalf("newFastValidator: %v", err)
	}
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
		{name: "r4-examples", glob: "r4-examples/*.ndjson", minShare: 0.5},
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
			t.Logf("%s: %d lines, %d valid, fast path vouches for %d, %d wrong", s.name, c.lines, c.refValid, c.fastValid, c.wrong)
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
		t.Logf("fhir-test-cases: %d lines, %d valid, fast path vouches for %d, %d wrong", c.lines, c.refValid, c.fastValid, c.wrong)
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
		t.Logf("google-fhir-primitives: %d lines, %d valid, fast path vouches for %d, %d wrong", c.lines, c.refValid, c.fastValid, c.wrong)
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }
