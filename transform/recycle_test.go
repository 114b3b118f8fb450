package transform

import (
	"bytes"
	"testing"
)

// TestRecyclerZeroesAndKeepsContent: memory handed out again is zeroed as make gives it, Reallocate keeps what
// was written and zeroes what it adds, and buffers of no size class of ours are left to the collector.
func TestRecyclerZeroesAndKeepsContent(t *testing.T) {
	r := &recycler{}
	for _, size := range []int{1, 63, 64, 65, 1000, 1 << 20} {
		for range 3 { // the second and third allocations may be recycled ones
			b := r.Allocate(size)
			if len(b) != size {
				t.Fatalf("Allocate(%d) gave %d bytes", size, len(b))
			}
			if !bytes.Equal(b, make([]byte, size)) {
				t.Fatalf("Allocate(%d) gave memory that is not zeroed", size)
			}
			for i := range b {
				b[i] = 0xa5
			}
			r.Free(b)
		}
	}

	b := r.Allocate(100)
	copy(b, "fhirlake")
	b = r.Reallocate(50, b)  // shrinks in place
	b = r.Reallocate(120, b) // grows within the class: the bytes past 50 must be zero again
	if string(b[:8]) != "fhirlake" || !bytes.Equal(b[50:], make([]byte, 70)) {
		t.Fatalf("Reallocate within the class: %q", b)
	}
	b = r.Reallocate(5000, b) // another class
	if len(b) != 5000 || string(b[:8]) != "fhirlake" || !bytes.Equal(b[8:], make([]byte, 4992)) {
		t.Fatalf("Reallocate to a larger class: %d bytes, %q...", len(b), b[:16])
	}

	r.Free(make([]byte, 100))      // capacity of no class: ignored
	r.Free(make([]byte, 0, 1<<27)) // past the largest class: ignored
	if got := r.Allocate(1 << 27); len(got) != 1<<27 {
		t.Fatalf("large Allocate gave %d bytes", len(got))
	}
}
