package pipeline_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/sinks"
	"gocloud.dev/blob"
)

// TestRunRetiresIdleTypes: a run whose live heap is over its target has its decoders retire the types they are
// done with (transform.Worker.RetireIdle), and writes what a run that never gives way writes.
func TestRunRetiresIdleTypes(t *testing.T) {
	src := subset(t, filepath.Join(sharedData, "synthea-100"),
		"AllergyIntolerance.ndjson", "CarePlan.ndjson", "Immunization.ndjson")
	var mu sync.Mutex
	var retired []string
	defer pipeline.SetRetiredHook(func(types []string) {
		mu.Lock()
		defer mu.Unlock()
		retired = append(retired, types...)
	})()
	run := func(heapTarget int64) (*blob.Bucket, *sinks.Manifest) {
		dst := memBucket(t)
		// One decoder, whose batch of a type is flushed at 38 rows: AllergyIntolerance's 38 lines leave none
		// pending, and Immunization's 1,287 after them leave it idle for long enough.
		m, err := pipeline.Run(context.Background(), src, pipeline.Sink{Bucket: dst, Prefix: "out"},
			pipeline.Options{Workers: 1, BatchRows: 38, HeapTarget: heapTarget, Validator: "fast",
				Allocator: checked(t), Now: fixedClock()})
		if err != nil {
			t.Fatal(err)
		}
		return dst, m
	}
	never, mn := run(-1)
	if len(retired) != 0 {
		t.Fatalf("a run that never gives way retired %v", retired)
	}
	giving, mg := run(1) // always over its target
	if !slices.Contains(retired, "AllergyIntolerance") {
		t.Errorf("retired %v, want AllergyIntolerance among them", retired)
	}
	sameOutput(t, never, mn, giving, mg)
}
