package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
)

// TestMessageCannotSendOutputElsewhere: messages naming an output outside the allow-list, a path that climbs out of
// it or into another run's reserved names, or a store export into a bucket of their choosing, are poison: nothing is
// exported and nothing is written.
func TestMessageCannotSendOutputElsewhere(t *testing.T) {
	h := newHarness(t)
	store := h.f.healthcare.StoreName()
	msg := func(kind, output, extra string) string {
		return `{"version":1,"store":"` + store + `","kind":"` + kind + `","output":"` + output + `"` + extra + `}`
	}
	tests := []struct{ name, data, reason string }{
		{"another bucket", msg("bulk", "mem://elsewhere/x", ""), "not in the allowed outputs"},
		{"a bucket with the allowed name as prefix", msg("bulk", "mem://lakehouse/x", ""), "not in the allowed outputs"},
		{"dot dot", msg("bulk", "mem://lake/fhir/../../x", ""), "relative path segment"},
		{"escaped dot dot", msg("bulk", "mem://lake/%2e%2e/x", ""), "percent escape"},
		{"another run's ledger", msg("bulk", "mem://lake/fhir/_runs/r1", ""), "reserves"},
		{"export to the sender's bucket", msg("store", "mem://lake/fhir", `,"export_prefix":"gs://attacker/x"`), "not in the allowed export prefixes"},
		{"export prefix dot dot", msg("store", "mem://lake/fhir", `,"export_prefix":"gs://`+fakeExportBucket+`/../x"`), "relative path segment"},
		{"run id climbing", msg("bulk", "mem://lake/fhir", `,"run_id":"../x"`), "run_id"},
		{"group id climbing", msg("group", "mem://lake/fhir", `,"group":".."`), "not a FHIR id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := h.r.handle(context.Background(), delivery{Data: []byte(tc.data), Source: "test"})
			if o.Verdict != ack || !errors.Is(o.Err, trigger.ErrPoison) || !strings.Contains(o.Poison, tc.reason) {
				t.Errorf("outcome %+v, want poison saying %q", o, tc.reason)
			}
		})
	}
	if n := h.f.healthcare.Starts(); n != 0 {
		t.Errorf("%d exports started", n)
	}
	if len(h.r.outputs.mem) != 0 {
		t.Errorf("outputs opened: %v", h.r.outputs.mem)
	}
}

// TestTamperedLedgerRunID: a ledger entry whose run id says something else than its key is taken over under the key
// the message names; nothing is written outside OUT/<run_id> and OUT/_runs/<run_id>.
func TestTamperedLedgerRunID(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	b, prefix := h.out(t)
	msg := h.message(trigger.KindBulk, `,"run_id":"r1"`)
	st := sinks.RunState{RunID: "r1", State: sinks.RunClaimed, Attempt: 1, Owner: "gone", Updated: time.Now()}
	if err := sinks.ClaimRun(ctx, b, prefix, st); err != nil {
		t.Fatal(err)
	}
	// The entry's content claims another run id (the key stays the run's).
	if err := b.WriteAll(ctx, prefix+"/_runs/r1/state.json",
		[]byte(`{"run_id":"../../escape","state":"claimed","attempt":1,"owner":"gone"}`), nil); err != nil {
		t.Fatal(err)
	}
	o := h.r.handle(ctx, delivery{Data: []byte(msg), Source: "test"})
	if o.State != sinks.RunPublished || o.Err != nil {
		t.Fatalf("outcome %+v", o)
	}
	for _, key := range bucketKeys(t, b, "") {
		if !strings.HasPrefix(key, prefix+"/r1/") && !strings.HasPrefix(key, prefix+"/_runs/") {
			t.Errorf("object %s outside the run", key)
		}
	}
	got, err := sinks.ReadRun(ctx, b, prefix, "r1")
	if err != nil || got.RunID != "r1" || got.State != sinks.RunPublished {
		t.Errorf("ledger %+v, %v", got, err)
	}
}
