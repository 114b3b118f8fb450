package trigger_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/fhirlake/fhirlake/trigger"
)

const msgStore = "projects/p/locations/l/datasets/d/fhirStores/s"

var msgPolicy = trigger.Policy{Stores: []string{msgStore}, Outputs: []string{"gs://lake", "mem://", "file:///data"},
	ExportPrefixes: []string{"gs://exp"}}

func TestParseMessage(t *testing.T) {
	tests := []struct {
		name   string
		data   string
		policy *trigger.Policy
		poison string // substring of the reason; "" means valid
		check  func(t *testing.T, m trigger.Message)
	}{
		{name: "store export", data: `{"version":1,"store":"` + msgStore + `","kind":"store","types":["Patient","Observation","Patient"],
			"since":"2024-05-01T02:00:00+02:00","output":"gs://lake/fhir/","export_prefix":"gs://exp/x/"}`,
			check: func(t *testing.T, m trigger.Message) {
				if strings.Join(m.Types, ",") != "Observation,Patient" {
					t.Errorf("types = %v, want sorted without duplicates", m.Types)
				}
				if m.Since != "2024-05-01T00:00:00Z" || m.Output != "gs://lake/fhir" || m.ExportPrefix != "gs://exp/x" {
					t.Errorf("not normalised: %+v", m)
				}
				if m.RunID == "" || m.RunID != m.DeriveRunID() {
					t.Errorf("run id %q, want the derived one", m.RunID)
				}
			}},
		{name: "group since last", data: `{"version":1,"store":"` + msgStore + `","kind":"group","group":"g1","since":"last","output":"mem://x"}`,
			check: func(t *testing.T, m trigger.Message) {
				if _, ok := m.SinceTime(); ok || m.Since != trigger.SinceLast {
					t.Errorf("since = %q", m.Since)
				}
			}},
		{name: "explicit run id", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"file:///data/out","run_id":"daily-2024-05-02"}`,
			check: func(t *testing.T, m trigger.Message) {
				if m.RunID != "daily-2024-05-02" {
					t.Errorf("run id = %q", m.RunID)
				}
			}},
		{name: "wildcard policy", policy: &trigger.Policy{Stores: []string{"*"}, Outputs: []string{"*"}},
			data: `{"version":1,"store":"projects/a/locations/b/datasets/c/fhirStores/d","kind":"bulk","output":"gs://any"}`},
		{name: "not JSON", data: `hello`, poison: "not a JSON message document"},
		{name: "empty", data: ``, poison: "empty"},
		{name: "JSON array", data: `[1]`, poison: "not a JSON message document"},
		{name: "trailing data", data: `{"version":1} {}`, poison: "data after the object"},
		{name: "unknown field", data: `{"version":1,"sinse":"last"}`, poison: `unknown field "sinse"`},
		{name: "wrong type", data: `{"version":"1"}`, poison: `field "version" must be a JSON int`},
		{name: "missing fields", data: `{}`, poison: "version is missing"},
		{name: "missing store", data: `{"version":1,"kind":"bulk","output":"gs://lake"}`, poison: "store is missing"},
		{name: "future version", data: `{"version":2,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake"}`, poison: "version 2 is not supported"},
		{name: "store not allowed", data: `{"version":1,"store":"projects/p/locations/l/datasets/d/fhirStores/other","kind":"bulk","output":"gs://lake"}`,
			poison: "not in the allowed stores"},
		{name: "output not allowed", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lakehouse/x"}`,
			poison: "not in the allowed outputs"},
		{name: "output scheme", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"s3://lake"}`, poison: "is not gs://"},
		{name: "output dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/../x"}`, poison: "relative path"},
		{name: "group missing", data: `{"version":1,"store":"` + msgStore + `","kind":"group","output":"gs://lake"}`, poison: "group is missing"},
		{name: "bad kind", data: `{"version":1,"store":"` + msgStore + `","kind":"all","output":"gs://lake"}`, poison: `kind "all"`},
		{name: "bad type", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","types":["Patients"],"output":"gs://lake"}`, poison: `"Patients" is not an R4`},
		{name: "bad since", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","since":"yesterday","output":"gs://lake"}`, poison: "since must be"},
		{name: "store without export prefix", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake"}`, poison: "export_prefix is missing"},
		{name: "bulk with export prefix", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake","export_prefix":"gs://e"}`,
			poison: "export_prefix applies to kind store only"},
		{name: "bad run id", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake","run_id":"_runs"}`, poison: "run_id"},
		{name: "export prefix not allowed", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://attacker/x"}`,
			poison: "not in the allowed export prefixes"},
		{name: "export prefix beside an allowed one", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://exp-evil/x"}`,
			poison: "not in the allowed export prefixes"},
		{name: "export prefix dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://exp/a/../../b"}`,
			poison: "relative path segment"},
		{name: "export prefix escaped dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://exp/%2e%2e/b"}`,
			poison: "percent escape"},
		{name: "export prefix bad bucket", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://Exp?x/y"}`,
			poison: "bucket name"},
		{name: "export prefix empty segment", data: `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://exp/a//b"}`,
			poison: "empty path segment"},
		{name: "export prefix, empty policy", policy: &trigger.Policy{Stores: []string{msgStore}, Outputs: []string{"*"}},
			data:   `{"version":1,"store":"` + msgStore + `","kind":"store","output":"gs://lake","export_prefix":"gs://exp/x"}`,
			poison: "not in the allowed export prefixes"},
		{name: "output beside an allowed bucket", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake-evil/x"}`,
			poison: "not in the allowed outputs"},
		{name: "output in another scheme", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"file:///lake/x"}`,
			poison: "not in the allowed outputs"},
		{name: "output escaped dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/%2e%2e/x"}`,
			poison: "percent escape"},
		{name: "output escaped slash", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/a%2F..%2Fb"}`,
			poison: "percent escape"},
		{name: "output file dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"file:///data/../etc"}`,
			poison: "relative path segment"},
		{name: "output dot", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/./x"}`, poison: "relative path segment"},
		{name: "output empty segment", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake//x"}`, poison: "empty path segment"},
		{name: "output NUL", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/a\u0000b"}`, poison: "control character"},
		{name: "output newline", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/a\nb"}`, poison: "control character"},
		{name: "output backslash", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/a\\..\\b"}`, poison: "backslash"},
		{name: "output user info", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://x@lake/y"}`, poison: "is not gs://"},
		{name: "output port", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake:443/y"}`, poison: "Cloud Storage bucket"},
		{name: "output upper case bucket", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://LAKE/y"}`, poison: "Cloud Storage bucket"},
		{name: "output query", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/y?x=1"}`, poison: "is not gs://"},
		{name: "output in another run's ledger", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake/fhir/_runs/r1"}`,
			poison: "reserves"},
		{name: "output in another run's quarantine", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"mem://x/r/_rejects"}`,
			poison: "reserves"},
		{name: "group dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"group","group":"..","output":"gs://lake"}`, poison: "not a FHIR id"},
		{name: "group dot", data: `{"version":1,"store":"` + msgStore + `","kind":"group","group":".","output":"gs://lake"}`, poison: "not a FHIR id"},
		{name: "group slash", data: `{"version":1,"store":"` + msgStore + `","kind":"group","group":"g/../../x","output":"gs://lake"}`, poison: "not a FHIR id"},
		{name: "run id slash", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake","run_id":"a/../../b"}`, poison: "run_id"},
		{name: "run id dot dot", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake","run_id":".."}`, poison: "run_id"},
		{name: "run id NUL", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake","run_id":"a\u0000"}`, poison: "run_id"},
		{name: "run id too long", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake","run_id":"` + strings.Repeat("a", 64) + `"}`, poison: "run_id"},
		{name: "type path", data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","types":["../Patient"],"output":"gs://lake"}`, poison: "is not an R4"},
		{name: "store with a slash too many", data: `{"version":1,"store":"` + msgStore + `/../x","kind":"bulk","output":"gs://lake"}`, poison: "is not projects/"},
		{name: "empty policy", policy: &trigger.Policy{}, data: `{"version":1,"store":"` + msgStore + `","kind":"bulk","output":"gs://lake"}`,
			poison: "not in the allowed stores"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := msgPolicy
			if tc.policy != nil {
				p = *tc.policy
			}
			m, err := trigger.ParseMessage([]byte(tc.data), p)
			if tc.poison == "" {
				if err != nil {
					t.Fatalf("ParseMessage: %v", err)
				}
				if tc.check != nil {
					tc.check(t, m)
				}
				return
			}
			if !errors.Is(err, trigger.ErrPoison) {
				t.Fatalf("err = %v, want ErrPoison", err)
			}
			if !strings.Contains(err.Error(), tc.poison) {
				t.Errorf("err = %q, want it to say %q", err, tc.poison)
			}
		})
	}
}

// TestRunIDDeterministic: equal messages (after normalisation) share a run id, different ones do not.
func TestRunIDDeterministic(t *testing.T) {
	parse := func(s string) trigger.Message {
		t.Helper()
		m, err := trigger.ParseMessage([]byte(s), msgPolicy)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a := parse(`{"version":1,"store":"` + msgStore + `","kind":"bulk","types":["Patient","Encounter"],"output":"gs://lake/x"}`)
	b := parse(`{"output":"gs://lake/x/","types":["Encounter","Patient","Patient"],"kind":"bulk","store":"` + msgStore + `","version":1}`)
	c := parse(`{"version":1,"store":"` + msgStore + `","kind":"bulk","types":["Patient"],"output":"gs://lake/x"}`)
	if a.RunID != b.RunID {
		t.Errorf("equal messages have run ids %q and %q", a.RunID, b.RunID)
	}
	if a.RunID == c.RunID {
		t.Errorf("different messages share run id %q", a.RunID)
	}
	again := parse(string(a.Encode()))
	if again.RunID != a.RunID {
		t.Errorf("re-parsed encoded message has run id %q, want %q", again.RunID, a.RunID)
	}
}

func TestParsePush(t *testing.T) {
	data := base64.StdEncoding.EncodeToString([]byte(`{"version":1}`))
	tests := []struct {
		name   string
		body   string
		poison bool
	}{
		{name: "push", body: `{"message":{"data":"` + data + `","messageId":"42","publishTime":"2024-05-01T00:00:00Z"},"subscription":"projects/p/subscriptions/s"}`},
		{name: "not JSON", body: `<html>`, poison: true},
		{name: "bad base64", body: `{"message":{"data":"%%%","messageId":"1"}}`, poison: true},
		{name: "no message id", body: `{"message":{"data":"` + data + `"}}`, poison: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := trigger.ParsePush([]byte(tc.body))
			if tc.poison {
				if !errors.Is(err, trigger.ErrPoison) {
					t.Fatalf("err = %v, want ErrPoison", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(p.Message.Data) != `{"version":1}` || p.Message.MessageID != "42" {
				t.Errorf("decoded %+v", p)
			}
		})
	}
}
