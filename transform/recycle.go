package transform

import (
	"math/bits"
	"sync"

	"github.com/apache/arrow/go/v17/arrow/memory"
)

// recycler is the Worker's default allocator: Go memory, like memory.DefaultAllocator, except that a freed buffer
// is kept for the next allocation of its size class instead of being left to the garbage collector. A Worker
// allocates every batch's buffers afresh, and the records are released as soon as a Table has encoded them
// (sinks.Table keeps nothing of a record), so the same few megabytes come back batch after batch: without reuse
// they were half of everything a run allocated, and what sets how often the collector runs under a memory limit.
// Unlike make, it hands buffers out as they were left: clearing every buffer and every doubling of one cost 2 to 3%
// of a run, and the cols zero the parts they rely on themselves (gbuf.ensure, col.pad, zeros.buffer), where the
// values and string data of a batch are written before they are read. The pools are sync.Pools, which the
// collector empties, so what is kept is bounded by what was freed since the last collections.
type recycler struct {
	pools [maxRecycleClass + 1]sync.Pool // of *[]byte with capacity 1<<class
}

const (
	minRecycleClass = 6  // 64 bytes
	maxRecycleClass = 26 // 64 MiB: larger buffers are not kept
)

// goRecycler is the process's recycler: every Worker shares it.
var goRecycler = &recycler{}

func recycleClass(size int) int { return max(bits.Len(uint(size-1)), minRecycleClass) }

func (r *recycler) Allocate(size int) []byte {
	c := recycleClass(size)
	if c > maxRecycleClass {
		return make([]byte, size)
	}
	if p, ok := r.pools[c].Get().(*[]byte); ok {
		return (*p)[:size]
	}
	return make([]byte, size, 1<<c)
}

func (r *recycler) Reallocate(size int, b []byte) []byte {
	if size <= cap(b) {
		return b[:size]
	}
	nb := r.Allocate(size)
	copy(nb, b)
	r.Free(b)
	return nb
}

func (r *recycler) Free(b []byte) {
	c := cap(b)
	if c == 0 || c&(c-1) != 0 {
		return // not one of ours
	}
	k := bits.TrailingZeros(uint(c))
	if k < minRecycleClass || k > maxRecycleClass {
		return
	}
	b = b[:0]
	r.pools[k].Put(&b)
}

var _ memory.Allocator = (*recycler)(nil)
