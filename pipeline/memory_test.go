package pipeline

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestHeapTarget(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	for _, tc := range []struct {
		limit, option, want int64
	}{
		{300 << 20, 0, 200 << 20}, // two thirds of Go's soft limit
		{math.MaxInt64, 0, 0},     // no limit: no target
		{400 << 20, 100 << 20, 100 << 20},
		{400 << 20, -1, 0},
		{math.MaxInt64, 100 << 20, 100 << 20},
	} {
		debug.SetMemoryLimit(tc.limit)
		if got := (Options{HeapTarget: tc.option}).heapTarget(); got != tc.want {
			t.Errorf("limit %d, HeapTarget %d: target %d, want %d", tc.limit, tc.option, got, tc.want)
		}
	}
}

// TestBatchBytesGiveWay checks that a decoder's batches give way to a live heap over the run's target, down to a
// quarter of Options.BatchBytes, and that a budget the caller gives is not made to give way.
func TestBatchBytesGiveWay(t *testing.T) {
	runtime.GC() // so that the live heap is known, and more than a byte
	for _, tc := range []struct {
		name string
		opts Options
		want int64
	}{
		{"no target", Options{HeapTarget: -1, BatchBytes: 64 << 10}, 64 << 10},
		{"far over the target", Options{HeapTarget: 1, BatchBytes: 64 << 10}, 16 << 10},
		{"far over the target, two decoders", Options{HeapTarget: 1, BatchBytes: 64 << 10, Workers: 2}, 16 << 10},
	} {
		r := &run{opts: tc.opts.withDefaults()}
		if got := r.batchBytes(); got != tc.want {
			t.Errorf("%s: batchBytes() = %d, want %d", tc.name, got, tc.want)
		}
	}
	// The caller's own budget keeps its own terms: HeapTarget is for the run's.
	opts := Options{HeapTarget: 1, BatchBytes: 64 << 10}
	opts.Parquet.Budget = (Options{HeapTarget: -1}).withDefaults().Parquet.Budget
	if got := (&run{opts: opts.withDefaults()}).batchBytes(); got != 64<<10 {
		t.Errorf("with the caller's budget: batchBytes() = %d, want %d", got, 64<<10)
	}
}
