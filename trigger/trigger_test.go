package trigger_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

// wantObject is an object expected in an Output: its key without the export id, type, layout and lines.
type wantObject struct {
	name         string // key, with {id} standing for the export id
	resourceType string
	layout       trigger.Layout
	lines        []string // "Type/id" of each line, in order
}

func TestExportKinds(t *testing.T) {
	typ := trigger.LayoutType
	tests := []struct {
		name string
		req  func(e *env) trigger.Request
		want []wantObject
	}{
		{
			name: "store",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindStore, Store: e.fake.StoreName(), Destination: e.storeDest("run1")}
			},
			want: []wantObject{
				{"run1/Encounter", "Encounter", typ, []string{"Encounter/e1"}},
				{"run1/Group", "Group", typ, []string{"Group/g1"}},
				{"run1/Observation", "Observation", typ, []string{"Observation/o1", "Observation/o2", "Observation/o3"}},
				{"run1/Organization", "Organization", typ, []string{"Organization/org1", "Organization/org2"}},
				{"run1/Patient", "Patient", typ, []string{"Patient/p1", "Patient/p2", "Patient/p3"}},
				{"run1/Practitioner", "Practitioner", typ, []string{"Practitioner/dr1"}},
			},
		},
		{
			name: "bulk",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindBulk, Store: e.fake.StoreName()}
			},
			want: []wantObject{
				{"bulk/{id}_Encounter.ndjson", "Encounter", typ, []string{"Encounter/e1"}},
				{"bulk/{id}_Group.ndjson", "Group", typ, []string{"Group/g1"}},
				{"bulk/{id}_Observation.ndjson", "Observation", typ, []string{"Observation/o1", "Observation/o2", "Observation/o3"}},
				{"bulk/{id}_Organization.ndjson", "Organization", typ, []string{"Organization/org1", "Organization/org2"}},
				{"bulk/{id}_Patient.ndjson", "Patient", typ, []string{"Patient/p1", "Patient/p2", "Patient/p3"}},
				{"bulk/{id}_Practitioner.ndjson", "Practitioner", typ, []string{"Practitioner/dr1"}},
			},
		},
		{
			name: "group",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindGroup, Store: e.fake.StoreName(), Group: "g1"}
			},
			want: []wantObject{
				{"bulk/{id}_Encounter.ndjson", "Encounter", typ, []string{"Encounter/e1"}},
				{"bulk/{id}_Group.ndjson", "Group", typ, []string{"Group/g1"}},
				{"bulk/{id}_Observation.ndjson", "Observation", typ, []string{"Observation/o1", "Observation/o2"}},
				{"bulk/{id}_Organization.ndjson", "Organization", typ, []string{"Organization/org1"}},
				{"bulk/{id}_Patient.ndjson", "Patient", typ, []string{"Patient/p1", "Patient/p2"}},
				{"bulk/{id}_Practitioner.ndjson", "Practitioner", typ, []string{"Practitioner/dr1"}},
			},
		},
		{
			name: "group by patient",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindGroup, Store: e.fake.StoreName(), Group: "g1", ByPatient: true}
			},
			want: []wantObject{
				{"bulk/{id}_Group.ndjson", "Group", typ, []string{"Group/g1"}},
				{"bulk/{id}_Patient.ndjson", "", trigger.LayoutPatient, []string{
					"Patient/p1", "Observation/o1", "Organization/org1", "Practitioner/dr1",
					"Patient/p2", "Encounter/e1", "Observation/o2", "Organization/org1",
				}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, testStore, healthcaretest.Options{Polls: 2}, trigger.Options{})
			h, err := e.client.Start(ctx, tt.req(e))
			if err != nil {
				t.Fatal(err)
			}
			out, err := e.client.Wait(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			checkObjects(t, e, h, out, tt.want)
			if got := e.fake.Starts(); got != 1 {
				t.Errorf("fake saw %d export starts, want 1", got)
			}
			if got := e.fake.Polls(); got != 3 || out.Progress.Polls != 3 || !out.Progress.Done {
				t.Errorf("fake answered %d polls, progress %+v; want 3 polls and done", got, out.Progress)
			}
			if want := newClock().Now(); !out.TransactionTime.Equal(want) {
				t.Errorf("TransactionTime = %v, want the start %v", out.TransactionTime, want)
			}
			if out.Bucket != e.fake.BucketName() || len(out.Errors) != 0 {
				t.Errorf("Bucket %q, Errors %v; want %q and none", out.Bucket, out.Errors, e.fake.BucketName())
			}
		})
	}
}

// checkObjects compares out.Objects with want, reading every object.
func checkObjects(t *testing.T, e *env, h trigger.Handle, out *trigger.Output, want []wantObject) {
	t.Helper()
	id := h.Operation[strings.LastIndex(h.Operation, "/")+1:]
	if len(out.Objects) != len(want) {
		t.Errorf("got %d objects %+v, want %d", len(out.Objects), out.Objects, len(want))
	}
	for i := 0; i < min(len(out.Objects), len(want)); i++ {
		got, w := out.Objects[i], want[i]
		key := strings.ReplaceAll(w.name, "{id}", id)
		if got.Key != key || got.ResourceType != w.resourceType || got.Layout != w.layout {
			t.Errorf("object %d = %+v, want key %s type %q layout %s", i, got, key, w.resourceType, w.layout)
			continue
		}
		lines := e.lines(t, got.Key)
		if gotIDs := ids(t, lines); !reflect.DeepEqual(gotIDs, w.lines) {
			t.Errorf("%s holds %v, want %v", got.Key, gotIDs, w.lines)
		}
		size := 0
		for _, l := range lines {
			size += len(l) + 1
		}
		if got.Size != int64(size) {
			t.Errorf("%s Size = %d, want %d", got.Key, got.Size, size)
		}
	}
}

func TestTypeAndSince(t *testing.T) {
	since := time.Date(2022, 12, 31, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		kind  trigger.Kind
		types []string
		since time.Time
		want  map[string][]string // resource type -> ids
	}{
		{
			name:  "bulk _type",
			kind:  trigger.KindBulk,
			types: []string{"Patient", "Organization"},
			want: map[string][]string{
				"Organization": {"Organization/org1", "Organization/org2"},
				"Patient":      {"Patient/p1", "Patient/p2", "Patient/p3"},
			},
		},
		{
			name:  "bulk _since",
			kind:  trigger.KindBulk,
			since: since,
			want: map[string][]string{
				"Encounter":   {"Encounter/e1"},
				"Observation": {"Observation/o2", "Observation/o3"},
				"Patient":     {"Patient/p2"},
			},
		},
		{
			name:  "store _type and _since",
			kind:  trigger.KindStore,
			types: []string{"Observation"},
			since: since,
			want:  map[string][]string{"Observation": {"Observation/o2", "Observation/o3"}},
		},
		{
			name:  "group _type",
			kind:  trigger.KindGroup,
			types: []string{"Observation"},
			want: map[string][]string{
				"Group":       {"Group/g1"},
				"Observation": {"Observation/o1", "Observation/o2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, testStore, healthcaretest.Options{}, trigger.Options{})
			req := trigger.Request{Kind: tt.kind, Store: e.fake.StoreName(), Types: tt.types, Since: tt.since}
			if tt.kind == trigger.KindStore {
				req.Destination = e.storeDest("inc/")
			}
			if tt.kind == trigger.KindGroup {
				req.Group = "g1"
			}
			h, err := e.client.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			out, err := e.client.Wait(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string][]string{}
			for _, o := range out.Objects {
				got[o.ResourceType] = ids(t, e.lines(t, o.Key))
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("exported %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPollsUnderBackoff(t *testing.T) {
	tests := []struct {
		name       string
		kind       trigger.Kind
		polls      int
		retryAfter time.Duration
		opts       trigger.Options
		want       []time.Duration
	}{
		{
			name:  "doubling to the cap, no jitter",
			kind:  trigger.KindBulk,
			polls: 5,
			opts:  trigger.Options{Floor: time.Second, Cap: 4 * time.Second, Jitter: -1},
			want:  []time.Duration{1 * time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second},
		},
		{
			name:  "jitter takes a share off",
			kind:  trigger.KindStore,
			polls: 3,
			opts:  trigger.Options{Floor: 10 * time.Second, Cap: time.Minute, Jitter: 0.5, Rand: func() float64 { return 0.5 }},
			want:  []time.Duration{7500 * time.Millisecond, 15 * time.Second, 30 * time.Second},
		},
		{
			name:       "Retry-After wins",
			kind:       trigger.KindGroup,
			polls:      2,
			retryAfter: 7 * time.Second,
			opts:       trigger.Options{Floor: time.Second, Jitter: -1},
			want:       []time.Duration{7 * time.Second, 7 * time.Second},
		},
		{
			name:  "done at first poll",
			kind:  trigger.KindBulk,
			polls: 0,
			want:  nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			var seen []trigger.Progress
			tt.opts.OnProgress = func(p trigger.Progress) { seen = append(seen, p) }
			e := newEnv(t, testStore, healthcaretest.Options{Polls: tt.polls, RetryAfter: tt.retryAfter}, tt.opts)
			req := trigger.Request{Kind: tt.kind, Store: e.fake.StoreName()}
			switch tt.kind {
			case trigger.KindStore:
				req.Destination = e.storeDest("backoff")
			case trigger.KindGroup:
				req.Group = "g1"
			}
			h, err := e.client.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.client.Wait(ctx, h); err != nil {
				t.Fatal(err)
			}
			if got := e.clock.Sleeps(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("slept %v, want %v", got, tt.want)
			}
			if got := e.fake.Polls(); got != tt.polls+1 || len(seen) != tt.polls+1 {
				t.Errorf("fake answered %d polls, OnProgress saw %d; want %d", got, len(seen), tt.polls+1)
			}
			for i, p := range seen {
				if p.Polls != i+1 || p.Done != (i == tt.polls) {
					t.Errorf("progress %d = %+v", i, p)
				}
			}
		})
	}
}

func TestStoreProgressCounters(t *testing.T) {
	ctx := context.Background()
	var seen []trigger.Progress
	e := newEnv(t, testStore, healthcaretest.Options{Polls: 1}, trigger.Options{OnProgress: func(p trigger.Progress) { seen = append(seen, p) }})
	h, err := e.client.Start(ctx, trigger.Request{Kind: trigger.KindStore, Store: e.fake.StoreName(), Destination: e.storeDest("c")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Wait(ctx, h); err != nil {
		t.Fatal(err)
	}
	want := []trigger.Progress{
		{Polls: 1, Success: 5, Pending: 6},
		{Polls: 2, Done: true, Success: 11},
	}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("progress %+v, want %+v", seen, want)
	}
}

func TestResumeFromPersistedHandle(t *testing.T) {
	for _, kind := range []trigger.Kind{trigger.KindStore, trigger.KindBulk, trigger.KindGroup} {
		t.Run(string(kind), func(t *testing.T) {
			e := newEnv(t, testStore, healthcaretest.Options{Polls: 4}, trigger.Options{})
			req := trigger.Request{Kind: kind, Store: e.fake.StoreName()}
			switch kind {
			case trigger.KindStore:
				req.Destination = e.storeDest("resume")
			case trigger.KindGroup:
				req.Group, req.ByPatient = "g1", true
			}
			h, err := e.client.Start(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			saved, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}

			// The first process is stopped after two polls.
			ctx, stop := context.WithCancel(context.Background())
			svc, err := e.fake.Service(ctx)
			if err != nil {
				t.Fatal(err)
			}
			first := trigger.New(svc, trigger.Options{Now: e.clock.Now, Sleep: e.clock.Sleep, OpenBucket: e.openBucket,
				OnProgress: func(p trigger.Progress) {
					if p.Polls == 2 {
						stop()
					}
				}})
			if _, err := first.Wait(ctx, h); !errors.Is(err, context.Canceled) {
				t.Fatalf("first Wait: %v, want context.Canceled", err)
			}

			// A second process resumes from the saved handle.
			resumed, err := trigger.ParseHandle(saved)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(resumed, h) {
				t.Errorf("handle round trip: %+v, want %+v", resumed, h)
			}
			out, err := e.client.Wait(context.Background(), resumed)
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Objects) == 0 {
				t.Error("resumed export found no objects")
			}
			if got := e.fake.Starts(); got != 1 {
				t.Errorf("fake saw %d export starts, want 1", got)
			}
			if got := e.fake.Polls(); got != 5 || out.Progress.Polls != 3 {
				t.Errorf("fake answered %d polls (resumed Wait %d); want 5 (3)", got, out.Progress.Polls)
			}
		})
	}
}

func TestDeadlineCancels(t *testing.T) {
	for _, kind := range []trigger.Kind{trigger.KindStore, trigger.KindBulk, trigger.KindGroup} {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, testStore, healthcaretest.Options{Faults: healthcaretest.Faults{NeverComplete: true}},
				trigger.Options{Floor: 10 * time.Second, Cap: time.Minute, Jitter: -1, Deadline: 5 * time.Minute})
			req := trigger.Request{Kind: kind, Store: e.fake.StoreName()}
			switch kind {
			case trigger.KindStore:
				req.Destination = e.storeDest("slow")
			case trigger.KindGroup:
				req.Group = "g1"
			}
			h, err := e.client.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.client.Wait(ctx, h)
			if !errors.Is(err, trigger.ErrDeadline) || !strings.Contains(err.Error(), "cancelled") {
				t.Fatalf("Wait: %v, want ErrDeadline and cancelled", err)
			}
			if got := e.fake.Cancels(); got != 1 {
				t.Errorf("fake cancelled %d exports, want 1", got)
			}
			// 10+20+40+60+60 = 190s, then 60s to 250s, then 50s to the deadline, where the last poll is made.
			want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute, time.Minute, 50 * time.Second}
			if got := e.clock.Sleeps(); !reflect.DeepEqual(got, want) {
				t.Errorf("slept %v, want %v", got, want)
			}
			if got := e.fake.Polls(); got != len(want)+1 {
				t.Errorf("fake answered %d polls, want %d", got, len(want)+1)
			}
			// A cancelled export is not waited on again.
			if _, err := e.client.Wait(ctx, h); err == nil || errors.Is(err, trigger.ErrDeadline) {
				t.Errorf("Wait on a cancelled export: %v, want an error other than the deadline", err)
			}
		})
	}
}

func TestDeadlineCountsFromStart(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testStore, healthcaretest.Options{Faults: healthcaretest.Faults{NeverComplete: true}},
		trigger.Options{Floor: 10 * time.Second, Jitter: -1, Deadline: time.Hour})
	h, err := e.client.Start(ctx, trigger.Request{Kind: trigger.KindBulk, Store: e.fake.StoreName()})
	if err != nil {
		t.Fatal(err)
	}
	// The process that resumes comes back two hours later: the deadline has passed, one poll then cancel.
	e.clock.Sleep(ctx, 2*time.Hour)
	if _, err := e.client.Wait(ctx, h); !errors.Is(err, trigger.ErrDeadline) {
		t.Fatalf("Wait: %v, want ErrDeadline", err)
	}
	if e.fake.Polls() != 1 || e.fake.Cancels() != 1 {
		t.Errorf("polls %d, cancels %d; want 1 and 1", e.fake.Polls(), e.fake.Cancels())
	}
}

func TestCancel(t *testing.T) {
	for _, kind := range []trigger.Kind{trigger.KindStore, trigger.KindBulk} {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, testStore, healthcaretest.Options{Polls: 100}, trigger.Options{})
			req := trigger.Request{Kind: kind, Store: e.fake.StoreName()}
			if kind == trigger.KindStore {
				req.Destination = e.storeDest("c")
			}
			h, err := e.client.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.client.Cancel(ctx, h); err != nil {
				t.Fatal(err)
			}
			if e.fake.Cancels() != 1 {
				t.Errorf("fake cancelled %d exports, want 1", e.fake.Cancels())
			}
			if err := e.client.Cancel(ctx, h); err == nil {
				t.Error("second Cancel succeeded, want the service's refusal")
			}
		})
	}
}

func TestFailureMessageSurfaced(t *testing.T) {
	for _, kind := range []trigger.Kind{trigger.KindStore, trigger.KindBulk, trigger.KindGroup} {
		t.Run(string(kind), func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, testStore, healthcaretest.Options{Polls: 1, Faults: healthcaretest.Faults{Fail: "destination bucket quota exceeded"}}, trigger.Options{})
			req := trigger.Request{Kind: kind, Store: e.fake.StoreName()}
			switch kind {
			case trigger.KindStore:
				req.Destination = e.storeDest("f")
			case trigger.KindGroup:
				req.Group = "g1"
			}
			h, err := e.client.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.client.Wait(ctx, h)
			if !errors.Is(err, trigger.ErrFailed) || !strings.Contains(err.Error(), "destination bucket quota exceeded") {
				t.Fatalf("Wait: %v, want ErrFailed with the operation's message", err)
			}
			if e.fake.Polls() != 2 {
				t.Errorf("fake answered %d polls, want 2 (no retry of a failed export)", e.fake.Polls())
			}
		})
	}
}

func TestManifestErrorsSurfaced(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testStore, healthcaretest.Options{Faults: healthcaretest.Faults{ManifestError: true}}, trigger.Options{})
	h, err := e.client.Start(ctx, trigger.Request{Kind: trigger.KindBulk, Store: e.fake.StoreName(), Types: []string{"Patient"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.client.Wait(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Objects) != 1 || out.Objects[0].ResourceType != "Patient" {
		t.Errorf("objects %+v, want the Patient file", out.Objects)
	}
	if len(out.Errors) != 1 {
		t.Fatalf("errors %+v, want 1", out.Errors)
	}
	if got := out.Errors[0]; got.ResourceType != "OperationOutcome" || got.Size <= 0 || !strings.HasSuffix(got.Key, ".ndjson") {
		t.Errorf("error entry %+v, want an OperationOutcome file", got)
	}
	if lines := ids(t, e.lines(t, out.Errors[0].Key)); len(lines) != 1 || lines[0] != "OperationOutcome/" {
		t.Errorf("error file holds %v", lines)
	}
}

func TestTransientFaultsRecovered(t *testing.T) {
	tests := []struct {
		name   string
		kind   trigger.Kind
		faults healthcaretest.Faults
	}{
		{name: "bulk 429/503", kind: trigger.KindBulk, faults: healthcaretest.Faults{Seed: 1, Transient: 0.4}},
		{name: "store 429/503", kind: trigger.KindStore, faults: healthcaretest.Faults{Seed: 2, Transient: 0.4}},
		{name: "group resets", kind: trigger.KindGroup, faults: healthcaretest.Faults{Seed: 3, Reset: 0.3}},
		{name: "bulk mixed", kind: trigger.KindBulk, faults: healthcaretest.Faults{Seed: 4, Transient: 0.3, Reset: 0.2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			const polls = 6
			e := newEnv(t, testStore, healthcaretest.Options{Polls: polls, Faults: tt.faults}, trigger.Options{MaxRetries: 6})
			req := trigger.Request{Kind: tt.kind, Store: e.fake.StoreName()}
			switch tt.kind {
			case trigger.KindStore:
				req.Destination = e.storeDest("t")
			case trigger.KindGroup:
				req.Group = "g1"
			}
			h, err := e.client.Start(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			out, err := e.client.Wait(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Objects) == 0 {
				t.Error("no objects found")
			}
			t.Logf("%d requests, %d faults injected", e.fake.Requests(), e.fake.Injected())
			if e.fake.Injected() == 0 {
				t.Error("no fault was injected: the test proves nothing")
			}
			if e.fake.Starts() != 1 || e.fake.Polls() != polls+1 {
				t.Errorf("starts %d, polls %d; want 1 and %d", e.fake.Starts(), e.fake.Polls(), polls+1)
			}
			// Every request beyond the start and the polls is a retry of an injected fault.
			if extra := e.fake.Requests() - 1 - (polls + 1); extra != e.fake.Injected() {
				t.Errorf("%d extra requests for %d injected faults", extra, e.fake.Injected())
			}
		})
	}
}

func TestTransientFaultsBounded(t *testing.T) {
	tests := []struct {
		name string
		kind trigger.Kind
		poll bool // fail the polls, not the start
	}{
		{name: "start", kind: trigger.KindBulk},
		{name: "bulk poll", kind: trigger.KindBulk, poll: true},
		{name: "store poll", kind: trigger.KindStore, poll: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			const maxRetries = 3
			e := newEnv(t, testStore, healthcaretest.Options{}, trigger.Options{MaxRetries: maxRetries})
			req := trigger.Request{Kind: tt.kind, Store: e.fake.StoreName()}
			if tt.kind == trigger.KindStore {
				req.Destination = e.storeDest("b")
			}
			always := healthcaretest.Faults{Transient: 1}
			if !tt.poll {
				e.fake.SetFaults(always)
				_, err := e.client.Start(ctx, req)
				if err == nil || !strings.Contains(err.Error(), "injected") {
					t.Fatalf("Start: %v, want the injected error", err)
				}
			} else {
				h, err := e.client.Start(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				e.fake.SetFaults(always)
				if _, err := e.client.Wait(ctx, h); err == nil || !strings.Contains(err.Error(), "injected") {
					t.Fatalf("Wait: %v, want the injected error", err)
				}
			}
			if got := e.fake.Injected(); got != maxRetries+1 {
				t.Errorf("%d attempts, want %d", got, maxRetries+1)
			}
		})
	}
}

func TestStartRefused(t *testing.T) {
	tests := []struct {
		name string
		req  func(e *env) trigger.Request
		want string
	}{
		{
			name: "unknown group",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindGroup, Store: e.fake.StoreName(), Group: "nope"}
			},
			want: "Group/nope not found",
		},
		{
			name: "unknown store",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindBulk, Store: "projects/x/locations/y/datasets/z/fhirStores/w"}
			},
			want: "404",
		},
		{
			name: "other bucket",
			req: func(e *env) trigger.Request {
				return trigger.Request{Kind: trigger.KindStore, Store: e.fake.StoreName(), Destination: "gs://elsewhere/x"}
			},
			want: "no bucket elsewhere",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, testStore, healthcaretest.Options{}, trigger.Options{})
			_, err := e.client.Start(context.Background(), tt.req(e))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start: %v, want an error containing %q", err, tt.want)
			}
			if e.fake.Starts() != 0 {
				t.Errorf("fake started %d exports", e.fake.Starts())
			}
		})
	}
}

func TestStoreDestinationMustBeEmpty(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, testStore, healthcaretest.Options{}, trigger.Options{})
	req := trigger.Request{Kind: trigger.KindStore, Store: e.fake.StoreName(), Destination: e.storeDest("same")}
	h, err := e.client.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Wait(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Start(ctx, req); err == nil || !strings.Contains(err.Error(), "already holds objects") {
		t.Errorf("second Start into the same prefix: %v, want a refusal", err)
	}
	if e.fake.Starts() != 1 {
		t.Errorf("fake started %d exports, want 1", e.fake.Starts())
	}
}
