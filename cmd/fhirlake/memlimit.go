package main

import (
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupMemoryFiles hold the memory limit of the container the process runs in: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// setMemoryLimit gives the Go runtime a soft memory limit of 90% of the container's memory limit, unless
// GOMEMLIMIT sets one (the runtime reads that itself) or there is no limit. Left alone, the garbage collector lets
// the heap grow to about twice what is live before it collects, which on Cloud Run can get a container killed for
// memory it did not need. It returns the limit set, 0 for none.
func setMemoryLimit(getenv func(string) string, readFile func(string) ([]byte, error)) int64 {
	if getenv("GOMEMLIMIT") != "" {
		return 0
	}
	for _, f := range cgroupMemoryFiles {
		data, err := readFile(f)
		if err != nil {
			continue
		}
		if limit := containerLimit(string(data)); limit > 0 {
			debug.SetMemoryLimit(limit)
			return limit
		}
		return 0
	}
	return 0
}

// containerLimit parses a cgroup memory limit file and returns 90% of the limit, or 0 when there is none ("max",
// or v1's "no limit" of nearly 2^63).
func containerLimit(s string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n >= 1<<60 {
		return 0
	}
	return n / 10 * 9
}
