package main

import (
	"io/fs"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestContainerLimit(t *testing.T) {
	tests := []struct {
		name string
		file string
		want int64
	}{
		{"cgroup v2 limit", "536870912\n", 483183819},
		{"cgroup v2 without limit", "max\n", 0},
		{"cgroup v1 without limit", "9223372036854771712\n", 0},
		{"empty", "", 0},
		{"zero", "0", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := containerLimit(tc.file); got != tc.want {
				t.Errorf("containerLimit(%q) = %d, want %d", tc.file, got, tc.want)
			}
		})
	}
}

func TestMemoryLimitFor(t *testing.T) {
	const mib = 1 << 20
	env := func(gomemlimit string) func(string) string {
		return func(k string) string {
			if k == "GOMEMLIMIT" {
				return gomemlimit
			}
			return ""
		}
	}
	files := func(v2, v1 string) func(string) ([]byte, error) {
		return func(name string) ([]byte, error) {
			switch {
			case name == cgroupMemoryFiles[0] && v2 != "":
				return []byte(v2), nil
			case name == cgroupMemoryFiles[1] && v1 != "":
				return []byte(v1), nil
			}
			return nil, fs.ErrNotExist
		}
	}
	tests := []struct {
		name       string
		gomemlimit string
		v2, v1     string
		want       memoryLimit
	}{
		{"GOMEMLIMIT set", "1GiB", "536870912", "", memoryLimit{}},
		{"GOMEMLIMIT off", "off", "", "", memoryLimit{}},
		{"no container", "", "", "", memoryLimit{base: 184 * mib}},
		{"container without limit", "", "max\n", "", memoryLimit{base: 184 * mib}},
		{"container of 512 MiB", "", "536870912\n", "", memoryLimit{base: 184 * mib, ceiling: 483183819}},
		{"container of 128 MiB", "", "134217728", "", memoryLimit{base: 120795948, ceiling: 120795948}},
		{"cgroup v1", "", "", "268435456", memoryLimit{base: 184 * mib, ceiling: 241591905}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := memoryLimitFor(env(tc.gomemlimit), files(tc.v2, tc.v1)); got != tc.want {
				t.Errorf("memoryLimitFor = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDescribeMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		m          memoryLimit
		gomemlimit string
		want       string
	}{
		{memoryLimit{base: 192 << 20}, "", "soft memory limit 192 MiB, raised with what stays live"},
		{memoryLimit{base: 192 << 20, ceiling: 921 << 20}, "", "soft memory limit 192 MiB, raised with what stays live up to 921 MiB"},
		{memoryLimit{}, "300MiB", "GOMEMLIMIT=300MiB"},
		{memoryLimit{}, "off", "GOMEMLIMIT=off"},
		{memoryLimit{}, "", "no memory limit"},
	} {
		if got := tc.m.describe(tc.gomemlimit); got != tc.want {
			t.Errorf("%+v with GOMEMLIMIT %q: %q, want %q", tc.m, tc.gomemlimit, got, tc.want)
		}
	}
}

// TestLimitFor: the limit stays at the base until 80% of it is live, then rises with what is live, by twice as
// much, up to the ceiling.
func TestLimitFor(t *testing.T) {
	const mib = 1 << 20
	m := memoryLimit{base: 184 * mib}
	for _, tc := range []struct{ live, want int64 }{
		{0, m.base},
		{100 * mib, m.base},
		{m.base / 5 * 4, m.base},
		{160 * mib, 320*mib - m.base/5*3},
		{250 * mib, 500*mib - m.base/5*3},
	} {
		if got := m.limitFor(tc.live); got != tc.want {
			t.Errorf("live %d MiB: limit %d, want %d", tc.live/mib, got, tc.want)
		}
	}
	m.ceiling = 300 * mib
	if got := m.limitFor(250 * mib); got != m.ceiling {
		t.Errorf("live 250 MiB under a ceiling of 300 MiB: limit %d MiB, want the ceiling", got/mib)
	}
}

// TestMemoryLimitTarget: runs give way from two thirds of the base limit, below where limitFor raises it, and
// leave it to the pipeline's default (GOMEMLIMIT's) when fhirlake sets no limit.
func TestMemoryLimitTarget(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		m    memoryLimit
		want int64
	}{
		{memoryLimit{base: 192 * mib}, 128 * mib},
		{memoryLimit{base: 100 * mib, ceiling: 100 * mib}, 100 * mib / 3 * 2},
		{memoryLimit{}, 0},
	} {
		got := tc.m.target()
		if got != tc.want {
			t.Errorf("%+v: target %d, want %d", tc.m, got, tc.want)
		}
		if got > 0 && tc.m.limitFor(got) != tc.m.base {
			t.Errorf("%+v: the limit is already raised at the target, %d live", tc.m, got)
		}
	}
}

// TestAfterCollections: the watcher reports what is live after each collection, and stops when told to.
func TestAfterCollections(t *testing.T) {
	keep := make([]byte, 8<<20) // live for the collections below
	got := make(chan int64, 4)
	var calls atomic.Int32
	afterCollections(func(live int64) bool {
		got <- live
		return calls.Add(1) < 2
	})
	deadline := time.After(30 * time.Second)
	for n := 0; n < 2; {
		runtime.GC()
		select {
		case live := <-got:
			n++
			if live < int64(len(keep)) {
				t.Errorf("collection %d: %d bytes live, want at least the %d kept", n, live, len(keep))
			}
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%d reports after collections, want 2", n)
		}
	}
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if c := calls.Load(); c != 2 {
		t.Errorf("the watcher ran %d times, want 2: it goes on after being told to stop", c)
	}
	runtime.KeepAlive(keep)
}
