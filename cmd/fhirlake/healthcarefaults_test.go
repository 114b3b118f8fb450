package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

// published checks that the run o published every exported line as a row, and returns its manifest.
func (h *harness) checkPublished(t *testing.T, o outcome) *sinks.Manifest {
	t.Helper()
	if o.State != sinks.RunPublished || o.Err != nil || o.Verdict != ack {
		t.Fatalf("outcome %+v, want published", o)
	}
	b, prefix := h.out(t)
	m, err := sinks.ReadManifest(context.Background(), b, runPrefix(prefix, o.RunID))
	if err != nil {
		t.Fatal(err)
	}
	want := h.exportedTypes(t, m)
	if got := h.parquetRows(t, o.RunID, m); !maps.Equal(got, want) || len(got) == 0 {
		t.Errorf("Parquet rows per type %v, exported lines per type %v", got, want)
	}
	return m
}

// deliverUntilDone hands msg to the runner as Pub/Sub would, again after every nack (at most 5 times), and returns
// the outcomes.
func (h *harness) deliverUntilDone(t *testing.T, msg string) []outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	var outs []outcome
	for range 5 {
		o := h.r.handle(ctx, delivery{Data: []byte(msg), Source: "test"})
		outs = append(outs, o)
		if o.Verdict == ack {
			return outs
		}
	}
	t.Fatalf("still nacked after 5 deliveries: %+v", outs)
	return nil
}

// TestHealthcareTransientFaults: 429s, 503s and dropped connections on the Healthcare API (every request, or the
// status polls only) are retried with backoff and the run publishes every exported resource, for each export kind
// and several seeds. A store export whose start lost its connection is not started again in the same delivery
// (it could write into the same destination): the run fails resumably and its redelivery starts it at the next
// attempt's destination.
func TestHealthcareTransientFaults(t *testing.T) {
	for _, kind := range []trigger.Kind{trigger.KindStore, trigger.KindBulk, trigger.KindGroup} {
		for seed := range uint64(8) {
			faults := healthcaretest.Faults{Seed: seed, Transient: 0.35, Reset: 0.1, PollsOnly: seed%2 == 0}
			t.Run(fmt.Sprintf("%s seed %d polls only %v", kind, seed, faults.PollsOnly), func(t *testing.T) {
				h := newHarnessWith(t, healthcaretest.Options{Polls: 4, Faults: faults})
				outs := h.deliverUntilDone(t, h.message(kind, ""))
				h.checkPublished(t, outs[len(outs)-1])
				if h.f.healthcare.Injected() == 0 {
					t.Error("no fault injected")
				}
				for _, o := range outs[:len(outs)-1] {
					if o.State != sinks.RunFailed || o.Verdict != nack || !strings.Contains(o.Err.Error(), "start store export") {
						t.Errorf("a delivery before the last: %+v, want a store export start that lost its connection", o)
					}
				}
				t.Logf("%d of %d requests failed, %d deliveries", h.f.healthcare.Injected(), h.f.healthcare.Requests(), len(outs))
			})
		}
	}
}

// TestHealthcareFaultOutcomes: the other Healthcare API faults, through the worker (pstest): each ends as the README
// says, in the ledger and in what Pub/Sub is answered.
func TestHealthcareFaultOutcomes(t *testing.T) {
	tests := []struct {
		name   string
		kind   trigger.Kind
		faults healthcaretest.Faults
		setup  func(h *harness)
		// state and reason of the ledger; resume is where a redelivery goes on from ("" for a final failure)
		state, reason, resume string
		cancels               int
	}{
		{name: "store export fails", kind: trigger.KindStore, faults: healthcaretest.Faults{Fail: "destination bucket quota exceeded"},
			state: sinks.RunFailed, reason: "destination bucket quota exceeded: export failed"},
		{name: "bulk export fails", kind: trigger.KindBulk, faults: healthcaretest.Faults{Fail: "internal error"},
			state: sinks.RunFailed, reason: "internal error: export failed"},
		{name: "store export never completes", kind: trigger.KindStore, faults: healthcaretest.Faults{NeverComplete: true},
			setup: func(h *harness) { h.r.trigger.Deadline = 300 * time.Millisecond },
			state: sinks.RunFailed, reason: "still running after 300ms: export deadline exceeded; cancelled", cancels: 1},
		{name: "group export never completes", kind: trigger.KindGroup, faults: healthcaretest.Faults{NeverComplete: true},
			setup: func(h *harness) { h.r.trigger.Deadline = 300 * time.Millisecond },
			state: sinks.RunFailed, reason: "still running after 300ms: export deadline exceeded; cancelled", cancels: 1},
		{name: "polls unavailable past the retries", kind: trigger.KindBulk, faults: healthcaretest.Faults{Transient: 1, PollsOnly: true},
			setup: func(h *harness) { h.r.trigger.MaxRetries = 2 },
			state: sinks.RunFailed, reason: "(2 retries): googleapi: Error", resume: sinks.RunExporting},
		{name: "manifest with error entries", kind: trigger.KindBulk, faults: healthcaretest.Faults{ManifestError: true},
			state: sinks.RunPublished},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.f.healthcare.SetFaults(tc.faults)
			if tc.setup != nil {
				tc.setup(h)
			}
			msg := h.message(tc.kind, "")
			o := h.work(t, 1, msg)[0]
			b, prefix := h.out(t)
			st, err := sinks.ReadRun(context.Background(), b, prefix, o.RunID)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != tc.state || !strings.Contains(st.Reason, tc.reason) || st.Resume != tc.resume {
				t.Errorf("ledger: state %s, reason %q, resume %q; want %s, a reason saying %q, resume %q",
					st.State, st.Reason, st.Resume, tc.state, tc.reason, tc.resume)
			}
			if n := h.f.healthcare.Cancels(); n != tc.cancels {
				t.Errorf("%d exports cancelled, want %d", n, tc.cancels)
			}
			if n := h.f.healthcare.Starts(); n != 1 {
				t.Errorf("%d exports started, want 1", n)
			}
			if ok, _ := b.Exists(context.Background(), runPrefix(prefix, o.RunID)+"/_manifest.json"); ok != (tc.state == sinks.RunPublished) {
				t.Errorf("manifest exists: %v, run %s", ok, tc.state)
			}
			for _, m := range h.f.pubsub.Messages() {
				if m.Topic == h.f.topic(fakeDeadLetter) {
					t.Errorf("message dead-lettered: %s", m.Attributes["fhirlake_poison_reason"])
				}
			}

			switch {
			case tc.state == sinks.RunPublished:
				m := h.checkPublished(t, o)
				var errs []string
				if err := json.Unmarshal(m.Extra["export_errors"], &errs); err != nil || len(errs) != 1 ||
					!strings.HasPrefix(errs[0], "gs://"+fakeExportBucket+"/") || !strings.HasSuffix(errs[0], "_errors_OperationOutcome.ndjson") {
					t.Errorf("manifest export_errors %s (%v), want the export's error file", m.Extra["export_errors"], err)
				}
			case tc.resume == "":
				// Failed for good: acked once, and a redelivery is acked at once without a second export.
				if o.Verdict != ack || !(errors.Is(o.Err, trigger.ErrFailed) || errors.Is(o.Err, trigger.ErrDeadline)) {
					t.Errorf("outcome %+v, want an ack of a failed export", o)
				}
				for _, m := range h.f.pubsub.Messages() {
					if m.Topic == h.f.topic(fakeTopic) && (m.Deliveries != 1 || m.Acks != 1) {
						t.Errorf("message delivered %d times, acked %d", m.Deliveries, m.Acks)
					}
				}
				h.f.healthcare.SetFaults(healthcaretest.Faults{})
				again := h.work(t, 1, msg)[0]
				if again.Verdict != ack || again.State != sinks.RunFailed || h.f.healthcare.Starts() != 1 {
					t.Errorf("redelivery of a failed run: %+v, %d starts", again, h.f.healthcare.Starts())
				}
			default:
				// Failed resumably: nacked, and the redelivery after the fault resumes the same export.
				if o.Verdict != nack {
					t.Errorf("outcome %+v, want a nack", o)
				}
				h.f.healthcare.SetFaults(healthcaretest.Faults{})
				again := h.work(t, 1, msg)[0]
				h.checkPublished(t, again)
				if n := h.f.healthcare.Starts(); n != 1 {
					t.Errorf("the redelivery started another export (%d)", n)
				}
			}
		})
	}
}
