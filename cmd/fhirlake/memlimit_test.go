package main

import (
	"io/fs"
	"testing"
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

func TestSetMemoryLimitRespectsGOMEMLIMIT(t *testing.T) {
	read := func(string) ([]byte, error) { return []byte("max"), nil }
	if got := setMemoryLimit(func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	}, read); got != 0 {
		t.Errorf("with GOMEMLIMIT set: limit %d, want 0 (the runtime's own)", got)
	}
	none := func(string) ([]byte, error) { return nil, fs.ErrNotExist }
	if got := setMemoryLimit(func(string) string { return "" }, none); got != 0 {
		t.Errorf("without cgroup files: limit %d, want 0", got)
	}
	if got := setMemoryLimit(func(string) string { return "" }, read); got != 0 {
		t.Errorf("with memory.max \"max\": limit %d, want 0", got)
	}
}
