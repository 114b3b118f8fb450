package pipeline

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestKeySet(t *testing.T) {
	s := newKeySet(0)
	tests := []struct {
		name             string
		typ, id, version string
		want             bool
	}{
		{name: "first", typ: "Organization", id: "o1", version: "1", want: true},
		{name: "same key", typ: "Organization", id: "o1", version: "1", want: false},
		{name: "other version", typ: "Organization", id: "o1", version: "2", want: true},
		{name: "no version", typ: "Organization", id: "o1", want: true},
		{name: "other type, same id", typ: "Practitioner", id: "o1", version: "1", want: true},
		{name: "separators matter", typ: "Organization", id: "o", version: "11", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, held := s.add(tt.typ, tt.id, tt.version); got != tt.want || !held {
				t.Errorf("add = %v, held %v; want %v, held", got, held, tt.want)
			}
		})
	}
}

// TestKeySetLimit: past its limit the set takes no more keys; a key it holds is still not new, and one it does not
// hold is new but not held, every time.
func TestKeySetLimit(t *testing.T) {
	s := newKeySet(2)
	for _, tc := range []struct {
		id              string
		isNew, wantHeld bool
	}{{"a", true, true}, {"b", true, true}, {"a", false, false}, {"c", true, false}, {"c", true, false}, {"b", false, false}} {
		if isNew, held := s.add("Organization", tc.id, "1"); isNew != tc.isNew || held != tc.wantHeld {
			t.Errorf("add %s: new %v, held %v; want %v, %v", tc.id, isNew, held, tc.isNew, tc.wantHeld)
		}
	}
	if s.len() != 2 || s.keys.Load() != 2 {
		t.Errorf("the set holds %d keys (counted %d), want 2", s.len(), s.keys.Load())
	}
}

// TestKeySetConcurrent: of goroutines adding the same keys at once, exactly one sees each key as new.
func TestKeySetConcurrent(t *testing.T) {
	s := newKeySet(0)
	const keys, goroutines = 5000, 8
	var fresh atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range keys {
				k := (i + g*keys/goroutines) % keys // every goroutine walks all keys from a different start
				if isNew, _ := s.add("Organization", fmt.Sprint(k), "1"); isNew {
					fresh.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if fresh.Load() != keys || s.len() != keys {
		t.Errorf("%d adds were new and the set holds %d keys, want %d", fresh.Load(), s.len(), keys)
	}
}

// BenchmarkKeySet adds a million distinct resource versions and reports the memory the set holds per resource
// ("B/resource") and per million resources ("MB/1M").
func BenchmarkKeySet(b *testing.B) {
	const n = 1_000_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*7919)
	}
	b.ResetTimer()
	var perKey float64
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := newKeySet(0)
		for _, id := range ids {
			s.add("Observation", id, "1")
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perKey = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(s)
	}
	b.ReportMetric(perKey, "B/resource")
	b.ReportMetric(perKey*n/1e6, "MB/1M")
}
