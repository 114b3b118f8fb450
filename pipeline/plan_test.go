package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
)

func TestNewPlan(t *testing.T) {
	tests := []struct {
		name       string
		sizes      map[string]int // plain objects by key, of lines of 100 bytes
		gzip       []string       // keys written with the gzip magic (never cut)
		tasks      int
		splitBytes int64
		wantSplits int
	}{
		{name: "one big object", sizes: map[string]int{"Observation.ndjson": 100}, tasks: 3, splitBytes: 1000, wantSplits: 10},
		{name: "small objects stay whole", sizes: map[string]int{"a": 1, "b": 2, "c": 3}, tasks: 2, splitBytes: 1000, wantSplits: 3},
		{name: "more tasks than splits", sizes: map[string]int{"a": 25}, tasks: 8, splitBytes: 1000, wantSplits: 3},
		{name: "gzip read whole", sizes: map[string]int{"a": 30}, gzip: []string{"g.ndjson"}, tasks: 2, splitBytes: 1000, wantSplits: 4},
		{name: "uneven", sizes: map[string]int{"a": 95, "b": 7, "c": 33, "d": 1}, tasks: 4, splitBytes: 1000, wantSplits: 10 + 1 + 4 + 1},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := memBucket(t)
			line := append(bytes.Repeat([]byte("x"), 99), '\n')
			for key, n := range tt.sizes {
				if err := b.WriteAll(ctx, key, bytes.Repeat(line, n), nil); err != nil {
					t.Fatal(err)
				}
			}
			for _, key := range tt.gzip {
				if err := b.WriteAll(ctx, key, append([]byte{0x1f, 0x8b}, bytes.Repeat(line, 40)...), nil); err != nil {
					t.Fatal(err)
				}
			}
			src := pipeline.Source{Bucket: b, Name: "mem"}
			opts := pipeline.PlanOptions{RunID: "r", Tasks: tt.tasks, SplitBytes: tt.splitBytes, Layout: reader.LayoutType}
			p, err := pipeline.NewPlan(ctx, src, opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Splits) != tt.wantSplits {
				t.Errorf("%d splits, want %d", len(p.Splits), tt.wantSplits)
			}
			// The stored form is whole (every byte of every object in one split) and decodes to the same plan.
			data, err := p.Encode()
			if err != nil {
				t.Fatal(err)
			}
			back, err := pipeline.DecodePlan(data)
			if err != nil {
				t.Fatal(err)
			}
			if back.Hash() != p.Hash() {
				t.Error("the decoded plan differs")
			}
			// Deterministic: planned again from the same objects listed in another order, the same splits go to
			// the same tasks.
			objs, err := reader.List(ctx, b, "")
			if err != nil {
				t.Fatal(err)
			}
			slices.Reverse(objs)
			src.Objects = objs
			again, err := pipeline.NewPlan(ctx, src, opts)
			if err != nil {
				t.Fatal(err)
			}
			if assigned(p) != assigned(again) {
				t.Errorf("two plans of the same objects differ:\n%s\n%s", assigned(p), assigned(again))
			}
			// Balanced: no task holds more than the average plus one split.
			var total, largest int64
			for _, s := range p.Splits {
				total += s.End - s.Start
				largest = max(largest, s.End-s.Start)
			}
			for task, n := range p.TaskBytes() {
				if avg := total / int64(p.Tasks); n > avg+largest {
					t.Errorf("task %d reads %d bytes, over the average %d plus a split %d", task, n, avg, largest)
				}
			}
			for _, s := range p.Splits {
				o := p.Objects[s.Object]
				if slices.Contains(tt.gzip, o.Key) && (!o.Whole || s.Start != 0 || s.End != o.Size) {
					t.Errorf("gzip object %s cut: %+v", o.Key, s)
				}
			}
		})
	}
}

// assigned lists a plan's splits with their tasks, by object key.
func assigned(p *pipeline.Plan) string {
	var out []string
	for _, s := range p.Splits {
		out = append(out, fmt.Sprintf("%s[%d,%d)=t%d", p.Objects[s.Object].Key, s.Start, s.End, s.Task))
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}
