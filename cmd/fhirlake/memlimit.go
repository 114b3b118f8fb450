package main

import (
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"

	"github.com/fhirlake/fhirlake/pipeline"
)

// cgroupMemoryFiles hold the memory limit of the container the process runs in: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// defaultMemoryLimit is the Go runtime's soft memory limit while a run keeps little live: with the pages of the
// binary it maps (about 50 MB, up to 60 from a binary the linker has just written) it keeps a run's peak RSS under
// 256 MB. Left alone, the garbage collector lets the heap grow to about twice what is live before it collects:
// 0.33 GB of peak RSS on synthea-100 × 10 on two cores. 192 MiB left r4-examples on two cores at 245 to 257 MB
// from a freshly built binary; this, with runs giving way from two thirds of it, at 239 to 248, with synthea-100
// as fast (r4-examples, which keeps about 150 MiB live whatever gives way, is 5 to 10% slower).
const defaultMemoryLimit = 184 << 20

// memoryLimit is the soft memory limit fhirlake keeps when GOMEMLIMIT does not set one: base, raised after a
// collection that finds much of it live (limitFor), and never above ceiling (0: none).
type memoryLimit struct {
	base, ceiling int64
}

// memoryLimitFor returns the soft memory limit fhirlake keeps: a base of defaultMemoryLimit, or of 90% of the
// container's memory limit when that is smaller, with that 90% as the ceiling. It returns the zero memoryLimit
// (none of ours) when GOMEMLIMIT is set: the runtime reads that itself, and GOMEMLIMIT=off sets no limit.
func memoryLimitFor(getenv func(string) string, readFile func(string) ([]byte, error)) memoryLimit {
	if getenv("GOMEMLIMIT") != "" {
		return memoryLimit{}
	}
	m := memoryLimit{base: defaultMemoryLimit}
	for _, f := range cgroupMemoryFiles {
		data, err := readFile(f)
		if err != nil {
			continue
		}
		if c := containerLimit(string(data)); c > 0 {
			m.ceiling = c
			m.base = min(m.base, c)
		}
		break
	}
	return m
}

// heapTarget is the live heap over which a run's row groups and decoder batches give way (pipeline.Options.
// HeapTarget): two thirds of the base limit apply gave the runtime, so that a run lets go of them before the
// limit is raised. It is taken from the base, not from the limit as a run starts, which a run before it may have
// left raised. 0 (the pipeline's own default: two thirds of GOMEMLIMIT) when apply set no limit.
var heapTarget int64

// apply gives the Go runtime the base limit, and after every collection the limit for what the collection found
// live (limitFor): a run that keeps more live than the base allows for is not slowed down by back-to-back
// collections, its peak RSS grows instead, up to the ceiling. It sets heapTarget.
func (m memoryLimit) apply() {
	if m.base <= 0 {
		return
	}
	heapTarget = m.target()
	debug.SetMemoryLimit(m.base)
	afterCollections(func(live int64) bool {
		debug.SetMemoryLimit(m.limitFor(live))
		return true
	})
}

// target returns the heap target of runs under this limit: pipeline's for the base, 0 without one.
func (m memoryLimit) target() int64 { return pipeline.HeapTargetFor(m.base) }

// limitFor returns the soft limit after a collection that found live bytes live: the base limit while live is
// under 80% of it, then twice live less 60% of the base, so that the heap may grow by at least a fifth of the base
// between collections; at most the ceiling. With 184 MiB, a run that keeps 160 MiB live gets 210 MiB, one that
// keeps 250 MiB live 390 MiB (the runtime's default, without a limit, would let the heap grow to 500 MiB).
func (m memoryLimit) limitFor(live int64) int64 {
	l := max(m.base, 2*live-m.base/5*3)
	if m.ceiling > 0 {
		l = min(l, m.ceiling)
	}
	return l
}

// describe says what limit a process keeps, for the header of bench's output; gomemlimit is GOMEMLIMIT's value.
func (m memoryLimit) describe(gomemlimit string) string {
	switch {
	case m.base > 0 && m.ceiling > 0:
		return fmt.Sprintf("soft memory limit %d MiB, raised with what stays live up to %d MiB", m.base>>20, m.ceiling>>20)
	case m.base > 0:
		return fmt.Sprintf("soft memory limit %d MiB, raised with what stays live", m.base>>20)
	case gomemlimit != "":
		return "GOMEMLIMIT=" + gomemlimit
	}
	return "no memory limit"
}

// afterCollections calls after with the bytes found live after every collection, until after returns false. It is
// called from a cleanup of an object made unreachable for the next collection to find: the runtime runs cleanups
// after the collection that frees their object.
func afterCollections(after func(live int64) bool) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var arm func()
	arm = func() {
		sentinel := new([16]byte) // 16 bytes get an allocation of their own, not a block of the tiny allocator
		runtime.AddCleanup(sentinel, func(struct{}) {
			metrics.Read(sample)
			live := int64(0)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				live = int64(min(sample[0].Value.Uint64(), math.MaxInt64/4))
			}
			if after(live) {
				arm()
			}
		}, struct{}{})
	}
	arm()
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
