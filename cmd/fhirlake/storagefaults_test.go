package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"github.com/googleapis/gax-go/v2"
	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

const lakeBucket = "lake"

// gcsHarness is the fakes with the runner's Cloud Storage (the export bucket it reads, the output bucket
// gs://lake/fhir it writes and keeps its ledger in) reached through a faultProxy, by the storage client production
// builds (newGCSClient), with short backoffs.
type gcsHarness struct {
	f     *fakes
	proxy *faultProxy
	r     *runner
	log   *bytes.Buffer
}

// testGCS are production's storage settings with short waits: 5 tries, 1ms to 20ms apart, and a stall of 2s.
var testGCS = gcsOptions{
	Attempts: 5,
	Backoff:  gax.Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond, Multiplier: 2},
	Stall:    2 * time.Second,
	NoAuth:   true,
}

func newGCSHarness(t *testing.T, gopts gcsOptions) *gcsHarness {
	t.Helper()
	ctx := context.Background()
	f, err := startFakes(ctx, canaryStore(t), healthcaretest.Options{Polls: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	f.gcs.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: lakeBucket})
	h := &gcsHarness{f: f, log: &bytes.Buffer{}}
	var url string
	h.proxy, url = newFaultProxy(t, f.gcs.HTTPHandler())
	gopts.Endpoint = url + "/storage/v1/"
	client, err := newGCSClient(ctx, gopts)
	if err != nil {
		t.Fatal(err)
	}
	c := runConfig{
		AllowStores: f.healthcare.StoreName(), AllowOutputs: "gs://" + lakeBucket,
		Lease: time.Minute, ExportDeadline: time.Hour, PollFloor: time.Millisecond, PollCap: 5 * time.Millisecond,
		Workers: 2, MaxLineBytes: 1 << 20, RecursionDepth: 2,
	}
	log := slog.New(slog.NewJSONHandler(&lockedWriter{w: h.log}, &slog.HandlerOptions{ReplaceAttr: cloudLoggingKeys}))
	if h.r, err = f.runner(ctx, c, log); err != nil {
		t.Fatal(err)
	}
	gcs := &gcsBuckets{client: client}
	h.r.outputs = &outputs{gcs: gcs}
	h.r.openExportBucket = gcs.open
	t.Cleanup(h.r.outputs.Close)
	return h
}

// message is a bulk export of the whole store into gs://lake/fhir as run runID.
func (h *gcsHarness) message(runID string) []byte {
	return fmt.Appendf(nil, `{"version":1,"store":%q,"kind":"bulk","output":"gs://%s/fhir","run_id":%q}`,
		h.f.healthcare.StoreName(), lakeBucket, runID)
}

func (h *gcsHarness) handle(t *testing.T, runID string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	return h.r.handle(ctx, delivery{Data: h.message(runID), Source: "test"})
}

// lake opens the output bucket directly, past the proxy.
func (h *gcsHarness) lake(t *testing.T) *blob.Bucket {
	t.Helper()
	b, err := h.f.openBucket(context.Background(), lakeBucket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// published is what a published run holds, read back past the proxy: its manifest's counts and every row of every
// table it lists, as sorted JSON lines per type.
type published struct {
	Totals    sinks.Totals
	Resources map[string]string // type -> "valid rejected rows files"
	Inputs    int
	Rows      map[string][]string
}

func (h *gcsHarness) published(t *testing.T, runID string) published {
	t.Helper()
	return readPublished(t, h.lake(t), "fhir/"+runID)
}

// readPublished is the run published under prefix (no trailing "/") of b.
func readPublished(t *testing.T, b *blob.Bucket, prefix string) published {
	t.Helper()
	ctx := context.Background()
	m, err := sinks.ReadManifest(ctx, b, prefix)
	if err != nil {
		t.Fatalf("run %s: %v", prefix, err)
	}
	p := published{Totals: m.Totals, Resources: map[string]string{}, Inputs: len(m.Inputs), Rows: map[string][]string{}}
	for typ, rs := range m.Resources {
		p.Resources[typ] = fmt.Sprint(rs.Valid, rs.Rejected, rs.Rows, len(rs.Files))
		for _, f := range rs.Files {
			data, err := b.ReadAll(ctx, prefix+"/"+f.Key)
			if err != nil {
				t.Fatal(err)
			}
			p.Rows[typ] = append(p.Rows[typ], parquetJSON(t, data)...)
		}
		slices.Sort(p.Rows[typ])
	}
	return p
}

// parquetJSON is every row of a Parquet file as a JSON line.
func parquetJSON(t *testing.T, data []byte) []string {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	tbl, err := pqarrow.ReadTable(context.Background(), bytes.NewReader(data), nil, pqarrow.ArrowReadProperties{}, mem)
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	tr := array.NewTableReader(tbl, 1024)
	defer tr.Release()
	var rows []string
	for tr.Next() {
		var buf bytes.Buffer
		if err := array.RecordToJSON(tr.Record(), &buf); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, strings.Split(strings.TrimSpace(buf.String()), "\n")...)
	}
	return rows
}

func (p published) equal(q published) bool {
	return p.Totals == q.Totals && maps.Equal(p.Resources, q.Resources) && p.Inputs == q.Inputs &&
		maps.EqualFunc(p.Rows, q.Rows, slices.Equal)
}

// cleanRun is the output of a run without faults, the reference every faulted run must reproduce.
func cleanRun(t *testing.T) published {
	t.Helper()
	h := newGCSHarness(t, testGCS)
	if o := h.handle(t, "clean"); o.State != sinks.RunPublished || o.Err != nil {
		t.Fatalf("clean run: %+v", o)
	}
	p := h.published(t, "clean")
	if p.Totals.Lines == 0 || p.Totals.Rows != p.Totals.Lines || len(p.Rows) == 0 {
		t.Fatalf("clean run published %+v", p.Totals)
	}
	return p
}

// TestStorageTransientFaults: a run whose Cloud Storage calls fail now and then, in every way the proxy can break
// them, publishes exactly what a run without faults publishes (rows read back, manifest counts), with the storage
// client's own retries; a read cut short resumes at its byte offset.
func TestStorageTransientFaults(t *testing.T) {
	want := cleanRun(t)
	tests := []struct {
		name  string
		rules []faultRule
		// resumed: a read of an object whose Name contains this was reopened at a byte offset after the fault
		resumed string
	}{
		{name: "429 on reads", rules: []faultRule{{Op: "read", Bucket: fakeExportBucket, Nth: 1, Kind: "429"}, {Op: "read", Bucket: fakeExportBucket, Nth: 3, Kind: "429"}}},
		{name: "503 on reads", rules: []faultRule{{Op: "read", Bucket: fakeExportBucket, Nth: 2, Kind: "503"}}},
		{name: "reset before a read answers", rules: []faultRule{{Op: "read", Bucket: fakeExportBucket, Nth: 1, Kind: "reset"}}},
		{name: "reset mid-body", rules: []faultRule{{Op: "read", Object: "Observation", Nth: 1, Kind: "reset-mid-body"}}, resumed: "Observation"},
		{name: "body truncated", rules: []faultRule{{Op: "read", Object: "Patient", Nth: 1, Kind: "truncate"}}, resumed: "Patient"},
		{name: "read stalls", rules: []faultRule{{Op: "read", Bucket: fakeExportBucket, Nth: 1, Kind: "stall"}}},
		{name: "read stalls mid-body", rules: []faultRule{{Op: "read", Object: "Encounter", Nth: 1, Kind: "stall-mid-body"}}, resumed: "Encounter"},
		{name: "429 on a Parquet upload", rules: []faultRule{{Op: "write", Object: "part-", Nth: 1, Kind: "429"}}},
		{name: "503 on the manifest upload", rules: []faultRule{{Op: "write", Object: "_manifest.json", Nth: 1, Kind: "503"}}},
		{name: "upload answer cut short", rules: []faultRule{{Op: "write", Object: "Patient/part-", Nth: 1, Kind: "truncate"}, {Op: "write", Object: "state.json", Nth: 2, Kind: "reset-mid-body"}}},
		{name: "reset on an upload", rules: []faultRule{{Op: "write", Object: "part-", Nth: 2, Kind: "reset"}}},
		{name: "upload stalls", rules: []faultRule{{Op: "write", Object: "Patient/part-", Nth: 1, Kind: "stall"}}},
		{name: "503 on the ledger", rules: []faultRule{{Op: "write", Object: "state.json", Nth: 2, Kind: "503"}, {Op: "write", Object: "state.json", Nth: 4, Kind: "reset"}}},
		{name: "faults on stat and list", rules: []faultRule{{Op: "stat", Nth: 1, Kind: "503"}, {Op: "stat", Nth: 3, Kind: "reset"}, {Op: "list", Nth: 1, Kind: "429"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && strings.Contains(tc.name, "stall") {
				t.Skip("a stall costs the stall timeout")
			}
			h := newGCSHarness(t, testGCS)
			h.proxy.set(tc.rules...)
			o := h.handle(t, "faulted")
			if o.State != sinks.RunPublished || o.Err != nil || o.Verdict != ack {
				t.Fatalf("outcome %+v", o)
			}
			if got := h.published(t, "faulted"); !got.equal(want) {
				t.Errorf("published %+v\nwant %+v", got, want)
			}
			reqs := h.proxy.requests()
			injected := 0
			for i, r := range reqs {
				if r.Fault == "" {
					continue
				}
				injected++
				if tc.resumed == "" || !strings.Contains(r.Object, tc.resumed) {
					continue
				}
				resumed := false
				for _, later := range reqs[i+1:] {
					if later.Op == "read" && later.Object == r.Object && strings.HasPrefix(later.Range, "bytes=") &&
						!strings.HasPrefix(later.Range, "bytes=0-") {
						resumed = true
					}
				}
				if !resumed {
					t.Errorf("no read of %s resumed at an offset after %s: %+v", r.Object, r.Fault, reqs[i+1:])
				}
			}
			if injected != len(tc.rules) {
				t.Errorf("%d faults injected, want %d: %+v", injected, len(tc.rules), reqs)
			}
		})
	}
}

// TestStorageSeededFaults: plans of random faults on every kind of request, one per seed, each reproducing the clean
// output.
func TestStorageSeededFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("the table of TestStorageTransientFaults covers each kind of fault")
	}
	want := cleanRun(t)
	seeds := 12
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			h := newGCSHarness(t, testGCS)
			rules := faultPlan(seed)
			h.proxy.set(rules...)
			o := h.handle(t, "faulted")
			if o.State != sinks.RunPublished || o.Err != nil {
				t.Fatalf("plan %+v: outcome %+v", rules, o)
			}
			if got := h.published(t, "faulted"); !got.equal(want) {
				t.Errorf("plan %+v: published %+v\nwant %+v", rules, got, want)
			}
		})
	}
}

// faultPlan is seed's plan: 4 faults of random kinds on random early requests of each operation. No two rules of
// a plan break the same request, and none breaks more than one try of a call, so the retries always suffice.
func faultPlan(seed uint64) []faultRule {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	ops := []string{"read", "write", "stat", "list"}
	used := map[string]bool{}
	var rules []faultRule
	for len(rules) < 4 {
		r := faultRule{Op: ops[rng.IntN(len(ops))], Nth: 1 + rng.IntN(6), Kind: faultKinds[rng.IntN(len(faultKinds))]}
		key := fmt.Sprint(r.Op, r.Nth)
		if used[key] || r.Kind == "stall" && r.Op == "write" { // a stalled upload costs the stall timeout; covered above
			continue
		}
		used[key] = true
		rules = append(rules, r)
	}
	return rules
}

// TestStoragePersistentFault: a fault that outlasts the retries fails the run cleanly (no manifest; the ledger says
// failed, with a reason free of resource content, and where to resume; the message is nacked), and the redelivery
// after the fault has passed publishes what a clean run publishes.
func TestStoragePersistentFault(t *testing.T) {
	want := cleanRun(t)
	tests := []struct {
		name   string
		rule   faultRule
		reason string // in the ledger's reason: the storage client's, or the guard's
		resume string
	}{
		{name: "reads cut short", rule: faultRule{Op: "read", Bucket: fakeExportBucket, Kind: "truncate"}, reason: "6 times without progress: retry budget", resume: sinks.RunConverting},
		{name: "Parquet uploads refused", rule: faultRule{Op: "write", Object: "part-", Kind: "429"}, reason: "POST try 6 (the last one: 429 Too Many Requests): retry budget", resume: sinks.RunConverting},
		{name: "export unreadable", rule: faultRule{Op: "read", Bucket: fakeExportBucket, Kind: "503"}, reason: "retry failed after 5 attempts; last error: googleapi: got HTTP response code 503", resume: sinks.RunConverting},
		{name: "manifest upload reset", rule: faultRule{Op: "write", Object: "_manifest", Kind: "reset"}, reason: "(the last one: no answer): retry budget", resume: sinks.RunConverting},
		{name: "export listing unavailable", rule: faultRule{Op: "stat", Bucket: fakeExportBucket, Kind: "503"}, reason: "retry failed after 5 attempts; last error: googleapi: Error 503", resume: sinks.RunExporting},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && i > 1 {
				t.Skip("-short: a read fault and an upload fault only")
			}
			h := newGCSHarness(t, testGCS)
			h.proxy.set(tc.rule)
			o := h.handle(t, "faulted")
			if o.Verdict != nack || o.Err == nil || o.State != sinks.RunFailed {
				t.Fatalf("outcome %+v, want a nack of a failed run", o)
			}
			ctx := context.Background()
			b := h.lake(t)
			if ok, err := b.Exists(ctx, "fhir/faulted/_manifest.json"); ok || err != nil {
				t.Errorf("manifest exists (%v, %v) after a failed run", ok, err)
			}
			st, err := sinks.ReadRun(ctx, b, "fhir", "faulted")
			if err != nil {
				t.Fatal(err)
			}
			if st.State != sinks.RunFailed || st.Resume != tc.resume || !strings.Contains(st.Reason, tc.reason) || !st.Lease.IsZero() {
				t.Errorf("ledger %+v: want failed, resume %s, a reason saying %q, no lease", st, tc.resume, tc.reason)
			}
			state, err := b.ReadAll(ctx, "fhir/_runs/faulted/state.json")
			if err != nil {
				t.Fatal(err)
			}
			noCanary(t, "the ledger", state)
			noCanary(t, "the log", h.log.Bytes())
			noCanary(t, "the error", []byte(o.Err.Error()))

			h.proxy.set()
			o = h.handle(t, "faulted")
			if o.State != sinks.RunPublished || o.Err != nil || o.Verdict != ack {
				t.Fatalf("redelivery: %+v", o)
			}
			if got := h.published(t, "faulted"); !got.equal(want) {
				t.Errorf("redelivery published %+v\nwant %+v", got, want)
			}
			if n := h.f.healthcare.Starts(); n != 1 {
				t.Errorf("%d exports started, want 1", n)
			}
			st, _ = sinks.ReadRun(ctx, b, "fhir", "faulted")
			if st.State != sinks.RunPublished || st.Reason != "" || st.Resume != "" || st.Attempt != 2 {
				t.Errorf("ledger after the redelivery %+v", st)
			}
		})
	}
}

// canaryStore is the test store with one more Patient, whose every string element holds phiCanary.
func canaryStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(testStore)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(testStore, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == "Patient.ndjson" {
			data = append(data, `{"resourceType":"Patient","id":"canary","name":[{"family":"`+phiCanary+`","given":["`+
				phiCanary+`"]}],"address":[{"line":["`+phiCanary+`"],"city":"`+phiCanary+`"}],"birthDate":"1970-01-01"}`+"\n"...)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
