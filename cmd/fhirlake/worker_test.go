package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/parquet/file"
	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

// testStore is the small FHIR store of trigger's fake: 11 resources in 6 types, and a Group g1.
const testStore = "../../trigger/healthcaretest/testdata/store"

const testOutput = "mem://lake/fhir"

// harness is the fakes, a runner on them writing to testOutput, and a worker configuration.
type harness struct {
	f   *fakes
	r   *runner
	c   workerConfig
	log *bytes.Buffer
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessWith(t, healthcaretest.Options{Polls: 1})
}

// newHarnessWith is newHarness with the fake Healthcare API configured by hopts.
func newHarnessWith(t *testing.T, hopts healthcaretest.Options) *harness {
	t.Helper()
	ctx := context.Background()
	f, err := startFakes(ctx, testStore, hopts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	h := &harness{f: f, log: &bytes.Buffer{}}
	h.c = workerConfig{
		runConfig: runConfig{
			AllowStores: f.healthcare.StoreName(), AllowOutputs: "mem://lake", DeadLetterTopic: f.topic(fakeDeadLetter),
			AllowExportPrefixes: "gs://" + fakeExportBucket,
			Lease:               time.Minute, ExportDeadline: time.Hour, PollFloor: time.Millisecond, PollCap: 5 * time.Millisecond,
			Workers: 2, MaxLineBytes: 1 << 20, RecursionDepth: 2,
		},
		Subscription: f.subscription(fakeSubscription), MaxOutstandingMessages: 1, MaxOutstandingBytes: 1 << 20,
		MaxExtension: time.Hour,
	}
	log := slog.New(slog.NewJSONHandler(&lockedWriter{w: h.log}, &slog.HandlerOptions{ReplaceAttr: cloudLoggingKeys}))
	if h.r, err = f.runner(ctx, h.c.runConfig, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.r.outputs.Close)
	return h
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// message is a valid message of kind into testOutput.
func (h *harness) message(kind trigger.Kind, extra string) string {
	m := fmt.Sprintf(`{"version":1,"store":%q,"kind":%q,"output":%q`, h.f.healthcare.StoreName(), kind, testOutput)
	switch kind {
	case trigger.KindStore:
		m += `,"export_prefix":"gs://` + fakeExportBucket + `/store"`
	case trigger.KindGroup:
		m += `,"group":"g1"`
	}
	return m + extra + "}"
}

// runTimeout bounds a test's run or wait: it catches a hang, it is not a speed check. A run under the race
// detector on a loaded 2-core machine has taken more than 2 minutes.
const runTimeout = 5 * time.Minute

// work publishes msgs, runs the worker until it has seen n outcomes, and returns them in order.
func (h *harness) work(t *testing.T, n int, msgs ...string) []outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	for _, m := range msgs {
		if _, err := h.f.publish(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var got []outcome
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	err := work(wctx, h.c, h.r, h.f.ps, func(o outcome) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, o)
		if len(got) == n {
			stop()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("worker saw %d outcomes before the deadline, want %d", len(got), n)
	}
	return got
}

func (h *harness) out(t *testing.T) (*blob.Bucket, string) {
	t.Helper()
	b, prefix, _, err := h.r.outputs.open(context.Background(), testOutput)
	if err != nil {
		t.Fatal(err)
	}
	return b, prefix
}

// snapshot is every object under OUT/<runID>/, by key.
func (h *harness) snapshot(t *testing.T, runID string) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	b, prefix := h.out(t)
	got := map[string][]byte{}
	for _, key := range bucketKeys(t, b, runPrefix(prefix, runID)+"/") {
		data, err := b.ReadAll(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got[key] = data
	}
	return got
}

// exportedTypes counts, per resource type, the lines of the objects an export wrote (as the run's manifest lists
// them): the source the published tables are checked against.
func (h *harness) exportedTypes(t *testing.T, m *sinks.Manifest) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	b, err := h.f.openBucket(ctx, fakeExportBucket)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	counts := map[string]int64{}
	for _, in := range m.Inputs {
		data, err := b.ReadAll(ctx, in.Object)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			var r struct{ ResourceType string }
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("%s: %v", in.Object, err)
			}
			counts[r.ResourceType]++
		}
	}
	return counts
}

// parquetRows reads back every table file the manifest lists and counts its rows, per type.
func (h *harness) parquetRows(t *testing.T, runID string, m *sinks.Manifest) map[string]int64 {
	t.Helper()
	b, prefix := h.out(t)
	rows := map[string]int64{}
	for typ, rs := range m.Resources {
		for _, f := range rs.Files {
			data, err := b.ReadAll(context.Background(), runPrefix(prefix, runID)+"/"+f.Key)
			if err != nil {
				t.Fatal(err)
			}
			pr, err := file.NewParquetReader(bytes.NewReader(data))
			if err != nil {
				t.Fatalf("%s: %v", f.Key, err)
			}
			rows[typ] += pr.NumRows()
			pr.Close()
		}
	}
	return rows
}

// TestWorkerEndToEnd publishes one message of each export kind to pstest and reads the published Parquet back.
func TestWorkerEndToEnd(t *testing.T) {
	tests := []struct {
		name  string
		kind  trigger.Kind
		extra string
		types []string // the types that must be in the output
	}{
		{name: "store", kind: trigger.KindStore, types: []string{"Encounter", "Group", "Observation", "Organization", "Patient", "Practitioner"}},
		{name: "bulk", kind: trigger.KindBulk, extra: `,"types":["Patient","Observation"]`, types: []string{"Observation", "Patient"}},
		{name: "group", kind: trigger.KindGroup, types: []string{"Group", "Patient"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			os := h.work(t, 1, h.message(tc.kind, tc.extra))
			o := os[0]
			if o.Err != nil || o.Verdict != ack || o.State != sinks.RunPublished || o.Manifest == nil {
				t.Fatalf("outcome %+v", o)
			}
			b, prefix := h.out(t)
			m, err := sinks.ReadManifest(context.Background(), b, runPrefix(prefix, o.RunID))
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Export) == 0 || m.TransactionTime == "" || len(m.Message) == 0 || m.RunID != o.RunID {
				t.Errorf("manifest lacks the run's fields: export %s, transaction time %q, message %s, run id %q",
					m.Export, m.TransactionTime, m.Message, m.RunID)
			}
			if _, ok := m.PhaseSeconds["export"]; !ok {
				t.Errorf("phase_seconds %v lacks export", m.PhaseSeconds)
			}
			if _, ok := m.PhaseSeconds["convert"]; !ok {
				t.Errorf("phase_seconds %v lacks convert", m.PhaseSeconds)
			}
			want := h.exportedTypes(t, m)
			got := h.parquetRows(t, o.RunID, m)
			if !maps.Equal(got, want) {
				t.Errorf("Parquet rows per type %v, exported lines per type %v", got, want)
			}
			for _, typ := range tc.types {
				if got[typ] == 0 {
					t.Errorf("no %s rows; got %v", typ, got)
				}
			}
			if m.Totals.Rejected != 0 {
				t.Errorf("%d rejected lines", m.Totals.Rejected)
			}
			st, err := sinks.ReadRun(context.Background(), b, prefix, o.RunID)
			if err != nil || st.State != sinks.RunPublished || st.Manifest != o.RunID+"/_manifest.json" {
				t.Errorf("ledger %+v, %v", st, err)
			}
			if !strings.Contains(h.log.String(), `"run_id":"`+o.RunID+`"`) {
				t.Error("logs do not carry run_id")
			}
		})
	}
}

// TestRedeliverySameMessage: the same message three times is one export and one publish; the later deliveries are
// acked at once and change no byte of the output.
func TestRedeliverySameMessage(t *testing.T) {
	h := newHarness(t)
	msg := h.message(trigger.KindBulk, "")
	var first map[string][]byte
	var polls int
	outs := h.work(t, 1, msg)
	first = h.snapshot(t, outs[0].RunID)
	polls = h.f.healthcare.Polls()
	outs = append(outs, h.work(t, 2, msg, msg)...)

	if n := h.f.healthcare.Starts(); n != 1 {
		t.Errorf("%d exports started, want 1", n)
	}
	if n := h.f.healthcare.Polls(); n != polls {
		t.Errorf("redeliveries polled the export %d more times, want 0", n-polls)
	}
	published := 0
	for i, o := range outs {
		if o.Verdict != ack || o.Err != nil || o.RunID != outs[0].RunID {
			t.Errorf("delivery %d: %+v", i, o)
		}
		if o.Manifest != nil {
			published++
		}
		if i > 0 && !o.Already {
			t.Errorf("delivery %d was not acked as already published", i)
		}
	}
	if published != 1 {
		t.Errorf("%d publishes, want 1", published)
	}
	after := h.snapshot(t, outs[0].RunID)
	if len(first) == 0 || !maps.EqualFunc(first, after, bytes.Equal) {
		t.Errorf("output changed across redeliveries: %v -> %v", slices.Sorted(maps.Keys(first)), slices.Sorted(maps.Keys(after)))
	}
	for _, m := range h.f.pubsub.Messages() {
		if m.Deliveries != 1 || m.Acks != 1 {
			t.Errorf("message %s delivered %d times, acked %d times", m.ID, m.Deliveries, m.Acks)
		}
	}
}

// TestRedeliveryWhileExporting: a worker stopped (SIGTERM) while the export runs leaves the ledger at exporting with
// its lease released; the redelivery resumes the wait on the recorded export instead of starting another.
func TestRedeliveryWhileExporting(t *testing.T) {
	h := newHarness(t)
	h.f.healthcare.SetFaults(healthcaretest.Faults{NeverComplete: true})
	msg := h.message(trigger.KindStore, "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan outcome)
	go func() { done <- h.r.handle(ctx, delivery{Data: []byte(msg), ID: "1", Source: "test"}) }()
	select {
	case <-h.f.healthcare.PollsReached(2): // the export started, its handle recorded, and is being waited on
	case o := <-done:
		cancel()
		t.Fatalf("run ended before its export was waited on: %+v", o)
	}
	cancel()
	o := <-done
	if o.Verdict != nack || o.State != sinks.RunExporting {
		t.Fatalf("stopped run: %+v, want nack at exporting", o)
	}
	b, prefix := h.out(t)
	st, err := sinks.ReadRun(context.Background(), b, prefix, o.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != sinks.RunExporting || len(st.Export) == 0 || !st.Lease.IsZero() {
		t.Fatalf("ledger after stop: %+v, want exporting with a handle and no lease", st)
	}

	h.f.healthcare.SetFaults(healthcaretest.Faults{})
	outs := h.work(t, 1, msg)
	if outs[0].State != sinks.RunPublished || outs[0].Manifest == nil || outs[0].Err != nil {
		t.Fatalf("redelivery: %+v", outs[0])
	}
	if n := h.f.healthcare.Starts(); n != 1 {
		t.Errorf("%d exports started, want 1", n)
	}
	st, _ = sinks.ReadRun(context.Background(), b, prefix, o.RunID)
	if st.Attempt != 2 || !bytes.Equal(st.Export, outs[0].Manifest.Export) {
		t.Errorf("ledger %+v: want attempt 2 with the first export's handle", st)
	}
}

// TestRunHeldElsewhere: a delivery of a run another live worker holds is nacked and changes nothing; a converting
// run whose holder died is converted again into the same keys.
func TestRunHeldElsewhere(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	msg := h.message(trigger.KindBulk, "")
	m, err := trigger.ParseMessage([]byte(msg), h.r.policy)
	if err != nil {
		t.Fatal(err)
	}
	b, prefix := h.out(t)
	held := sinks.RunState{RunID: m.RunID, State: sinks.RunClaimed, Attempt: 1, Owner: "other", Lease: time.Now().Add(time.Hour)}
	if err := sinks.ClaimRun(ctx, b, prefix, held); err != nil {
		t.Fatal(err)
	}
	o := h.r.handle(ctx, delivery{Data: []byte(msg), Source: "test"})
	if o.Verdict != nack || !errors.Is(o.Err, errBusy) || h.f.healthcare.Starts() != 0 {
		t.Fatalf("held run: %+v (starts %d), want nack, busy, no export", o, h.f.healthcare.Starts())
	}

	// Publish once, then pretend the publish never happened: the run is at converting, its holder gone.
	held.Lease = time.Time{}
	if err := sinks.WriteRun(ctx, b, prefix, held); err != nil {
		t.Fatal(err)
	}
	o = h.r.handle(ctx, delivery{Data: []byte(msg), Source: "test"})
	if o.State != sinks.RunPublished {
		t.Fatalf("take-over: %+v", o)
	}
	first := h.snapshot(t, m.RunID)
	st, _ := sinks.ReadRun(ctx, b, prefix, m.RunID)
	st.State, st.Lease = sinks.RunConverting, time.Time{}
	if err := sinks.WriteRun(ctx, b, prefix, st); err != nil {
		t.Fatal(err)
	}
	o = h.r.handle(ctx, delivery{Data: []byte(msg), Source: "test"})
	if o.State != sinks.RunPublished || o.Manifest == nil {
		t.Fatalf("converting again: %+v", o)
	}
	if h.f.healthcare.Starts() != 1 {
		t.Errorf("%d exports, want 1", h.f.healthcare.Starts())
	}
	again := h.snapshot(t, m.RunID)
	if !slices.Equal(slices.Sorted(maps.Keys(first)), slices.Sorted(maps.Keys(again))) {
		t.Errorf("converting again wrote other keys: %v -> %v", slices.Sorted(maps.Keys(first)), slices.Sorted(maps.Keys(again)))
	}
}

// TestPoisonDeadLettered: poison of several kinds is acked once, published to the dead-letter topic with its reason,
// and never delivered again.
func TestPoisonDeadLettered(t *testing.T) {
	h := newHarness(t)
	store := h.f.healthcare.StoreName()
	poison := map[string]string{
		"not JSON":           `this is not json`,
		"missing fields":     `{"version":1,"kind":"bulk"}`,
		"store not allowed":  `{"version":1,"store":"projects/x/locations/l/datasets/d/fhirStores/other","kind":"bulk","output":"mem://lake/x"}`,
		"output not allowed": fmt.Sprintf(`{"version":1,"store":%q,"kind":"bulk","output":"gs://elsewhere/x"}`, store),
	}
	want := map[string]string{
		"not JSON":           "not a JSON message document",
		"missing fields":     "store is missing",
		"store not allowed":  "not in the allowed stores",
		"output not allowed": "not in the allowed outputs",
	}
	names := slices.Sorted(maps.Keys(poison))
	var msgs []string
	for _, n := range names {
		msgs = append(msgs, poison[n])
	}
	outs := h.work(t, len(msgs), msgs...)
	for _, o := range outs {
		if o.Verdict != ack || o.Poison == "" || !errors.Is(o.Err, trigger.ErrPoison) {
			t.Errorf("poison outcome %+v", o)
		}
	}
	if h.f.healthcare.Starts() != 0 {
		t.Errorf("poison started %d exports", h.f.healthcare.Starts())
	}
	byData := map[string]string{}
	for _, m := range h.f.pubsub.Messages() {
		switch m.Topic {
		case h.f.topic(fakeTopic):
			if m.Deliveries != 1 || m.Acks != 1 {
				t.Errorf("poison message %s delivered %d times, acked %d", m.ID, m.Deliveries, m.Acks)
			}
		case h.f.topic(fakeDeadLetter):
			byData[string(m.Data)] = m.Attributes["fhirlake_poison_reason"]
		}
	}
	for _, n := range names {
		reason, ok := byData[poison[n]]
		if !ok {
			t.Errorf("%s: not dead-lettered", n)
		} else if !strings.Contains(reason, want[n]) {
			t.Errorf("%s: dead-letter reason %q, want it to say %q", n, reason, want[n])
		}
	}
	if strings.Contains(h.log.String(), "this is not json") {
		t.Error("the log holds the poison payload")
	}
}

// TestSinceLast: a since "last" run exports from the previous run's transactionTime.
func TestSinceLast(t *testing.T) {
	h := newHarness(t)
	outs := h.work(t, 1, h.message(trigger.KindBulk, `,"run_id":"first"`))
	tt := outs[0].Manifest.TransactionTime
	outs = h.work(t, 1, h.message(trigger.KindBulk, `,"since":"last","run_id":"second"`))
	if outs[0].State != sinks.RunPublished {
		t.Fatalf("second run: %+v", outs[0])
	}
	b, prefix := h.out(t)
	st, err := sinks.ReadRun(context.Background(), b, prefix, "second")
	if err != nil {
		t.Fatal(err)
	}
	if st.Since != tt {
		t.Errorf("second run exported since %q, want the first run's transaction time %q", st.Since, tt)
	}
	if outs[0].Manifest.Totals.Lines != 0 { // every resource of the fake was updated long before
		t.Errorf("incremental run read %d lines, want 0", outs[0].Manifest.Totals.Lines)
	}
}
