package trigger_test

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/fhirlake/fhirlake/trigger"
)

var fuzzPolicy = trigger.Policy{Stores: []string{msgStore}, Outputs: []string{"gs://lake/fhir", "mem://", "file:///data"},
	ExportPrefixes: []string{"gs://exp"}}

var fuzzRunID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// FuzzParseMessage: whatever the bytes, ParseMessage either refuses them as poison or returns a message that is
// allowed, plain (no climbing path, no escape, no control byte in a location), normalised (decoding its encoding
// gives it back, with the same run id) and whose run id is one path segment. ParsePush never panics and refuses
// with ErrPoison only.
func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"store":"` + msgStore + `","kind":"store","types":["Patient","Observation"],"since":"2024-05-01T02:00:00+02:00","output":"gs://lake/fhir/x/","export_prefix":"gs://exp/x/"}`,
		`{"version":1,"store":"` + msgStore + `","kind":"group","group":"g1","since":"last","output":"mem://x"}`,
		`{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"file:///data/out","run_id":"daily-2024-05-02"}`,
		`{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/fhir/../x"}`,
		`{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/fhir/%2e%2e"}`,
		`{"version":1,"store":"` + msgStore + `","kind":"group","group":"..","output":"mem://"}`,
		`{"version":1,"store":"` + msgStore + `","kind":"store","output":"mem://a","export_prefix":"gs://exp//a"}`,
		`{"message":{"data":"eyJ2ZXJzaW9uIjoxfQ==","messageId":"1"}}`,
		`{"version":1e1}`, `[]`, ``, `{"version":1,"types":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := trigger.ParsePush(data); err != nil && !errors.Is(err, trigger.ErrPoison) {
			t.Fatalf("ParsePush: %v is not poison", err)
		}
		m, err := trigger.ParseMessage(data, fuzzPolicy)
		if err != nil {
			if !errors.Is(err, trigger.ErrPoison) {
				t.Fatalf("ParseMessage: %v is not poison", err)
			}
			return
		}
		if !fuzzRunID.MatchString(m.RunID) {
			t.Fatalf("run id %q", m.RunID)
		}
		for _, loc := range []string{m.Output, m.ExportPrefix} {
			if strings.ContainsAny(loc, "%\\") || strings.Contains(loc+"/", "/../") || strings.Contains(loc+"/", "/./") ||
				strings.ContainsFunc(loc, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("location %q passed", loc)
			}
		}
		if !strings.HasPrefix(m.Output, "gs://lake/fhir") && !strings.HasPrefix(m.Output, "mem://") &&
			!strings.HasPrefix(m.Output, "file:///data") {
			t.Fatalf("output %q outside the policy", m.Output)
		}
		if strings.HasPrefix(m.Output, "gs://lake/fhir") && m.Output != "gs://lake/fhir" && !strings.HasPrefix(m.Output, "gs://lake/fhir/") {
			t.Fatalf("output %q beside the allowed one", m.Output)
		}
		if m.Kind == trigger.KindStore && m.ExportPrefix != "gs://exp" && !strings.HasPrefix(m.ExportPrefix, "gs://exp/") {
			t.Fatalf("export prefix %q outside the policy", m.ExportPrefix)
		}
		if m.Group == "." || m.Group == ".." || strings.Contains(m.Group, "/") {
			t.Fatalf("group %q", m.Group)
		}
		if !slices.IsSorted(m.Types) {
			t.Fatalf("types %v not sorted", m.Types)
		}
		again, err := trigger.ParseMessage(m.Encode(), fuzzPolicy)
		if err != nil {
			t.Fatalf("the encoding of %+v does not parse: %v", m, err)
		}
		if again.RunID != m.RunID || string(again.Encode()) != string(m.Encode()) {
			t.Fatalf("not normalised: %s, then %s", m.Encode(), again.Encode())
		}
	})
}
