package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
)

// TestRunSpreadOverTasks gives the same message to three tasks at once, as a Cloud Run job with three tasks does:
// one exports and plans, the others wait for the plan on the ledger, each converts its splits, and the run is
// published once, with the rows of a run in one process.
func TestRunSpreadOverTasks(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	single := h.r.handle(ctx, delivery{Data: []byte(h.message(trigger.KindBulk, `,"run_id":"single"`)), Source: "job"})
	if single.Err != nil || single.Manifest == nil {
		t.Fatalf("single run: %+v", single)
	}

	const n = 3
	msg := []byte(h.message(trigger.KindBulk, `,"run_id":"spread"`))
	outs := make([]outcome, n)
	var wg sync.WaitGroup
	for i := range n {
		r, err := h.f.runner(ctx, h.c.runConfig, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		r.outputs = h.r.outputs // one process's mem:// buckets stand for the output bucket
		r.owner = fmt.Sprintf("test/task-%d", i)
		wg.Go(func() {
			outs[i] = r.handleTask(ctx, delivery{Data: msg, Source: "job"}, taskConfig{Tasks: n, TaskIndex: i, SplitBytes: 100})
		})
	}
	wg.Wait()
	published := 0
	for i, o := range outs {
		if o.Verdict != ack || o.Err != nil {
			t.Fatalf("task %d: %+v", i, o)
		}
		if o.Manifest != nil {
			published++
		}
	}
	if published == 0 {
		t.Fatal("no task published the run")
	}
	b, prefix := h.out(t)
	st, err := sinks.ReadRun(ctx, b, prefix, "spread")
	if err != nil || st.State != sinks.RunPublished {
		t.Fatalf("ledger: %+v, %v", st, err)
	}
	m, err := sinks.ReadManifest(ctx, b, runPrefix(prefix, "spread"))
	if err != nil {
		t.Fatal(err)
	}
	want := single.Manifest
	if m.Totals != want.Totals {
		t.Errorf("totals %+v, want %+v", m.Totals, want.Totals)
	}
	for typ, w := range want.Resources {
		if g := m.Resources[typ]; g.Rows != w.Rows || g.Valid != w.Valid {
			t.Errorf("%s: %+v, want %+v", typ, g, w)
		}
	}
	if m.TransactionTime == "" || len(m.Export) == 0 || len(m.Message) == 0 {
		t.Errorf("the manifest lacks the run's fields: %+v", m)
	}
	data, err := sinks.ReadPlan(ctx, b, prefix, "spread")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pipeline.DecodePlan(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Splits) <= len(plan.Objects) {
		t.Errorf("%d splits of %d objects: no object was cut", len(plan.Splits), len(plan.Objects))
	}
	// A task run again finds the run published and does nothing.
	again := h.r.handleTask(ctx, delivery{Data: msg, Source: "job"}, taskConfig{Tasks: n, TaskIndex: 1, SplitBytes: 100})
	if again.Err != nil || !again.Already {
		t.Errorf("a task after publication: %+v", again)
	}
}
