package transform

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/fhirlake/fhirlake/schema"
)

// TestRecyclerKeepsContent: Allocate and Reallocate give the sizes asked for, Reallocate keeps what was written,
// and buffers of no size class of ours are left to the collector. Recycled memory is not zeroed
// (TestWorkerOnReusedMemory checks that the cols do not rely on it).
func TestRecyclerKeepsContent(t *testing.T) {
	r := &recycler{}
	for _, size := range []int{1, 63, 64, 65, 1000, 1 << 20} {
		for range 3 { // the second and third allocations may be recycled ones
			b := r.Allocate(size)
			if len(b) != size {
				t.Fatalf("Allocate(%d) gave %d bytes", size, len(b))
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
	b = r.Reallocate(120, b) // grows within the class
	if len(b) != 120 || string(b[:8]) != "fhirlake" {
		t.Fatalf("Reallocate within the class: %d bytes, %q", len(b), b[:8])
	}
	b = r.Reallocate(5000, b) // another class
	if len(b) != 5000 || string(b[:8]) != "fhirlake" {
		t.Fatalf("Reallocate to a larger class: %d bytes, %q...", len(b), b[:16])
	}

	r.Free(make([]byte, 100))      // capacity of no class: ignored
	r.Free(make([]byte, 0, 1<<27)) // past the largest class: ignored
	if got := r.Allocate(1 << 27); len(got) != 1<<27 {
		t.Fatalf("large Allocate gave %d bytes", len(got))
	}
}

// dirtyAllocator hands out memory filled with 0xa5, as a recycled buffer may be.
type dirtyAllocator struct{}

func (dirtyAllocator) Allocate(size int) []byte { return bytes.Repeat([]byte{0xa5}, size) }

func (a dirtyAllocator) Reallocate(size int, b []byte) []byte {
	nb := a.Allocate(size)
	copy(nb, b)
	return nb
}

func (dirtyAllocator) Free([]byte) {}

// TestWorkerOnReusedMemory converts the same lines on memory that is zeroed and on memory full of old bytes, and
// checks that every buffer of every flushed record is the same to the byte: validity bits, offsets, the values of
// null slots, and string data. It fails if a col relies on the allocator to zero what it hands out.
func TestWorkerOnReusedMemory(t *testing.T) {
	var lines [][]byte
	for _, path := range []string{"testdata/synthea-excerpt.ndjson", "testdata/hl7-examples.ndjson"} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
		for sc.Scan() {
			if len(sc.Bytes()) > 0 {
				lines = append(lines, bytes.Clone(sc.Bytes()))
			}
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		f.Close()
	}
	convert := func(mem memory.Allocator) map[string][]arrow.Record {
		w, err := NewWorker(testRegistry(t), Options{Validator: ValidatorFast, Allocator: mem})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Release()
		out := map[string][]arrow.Record{}
		take := func() {
			for _, rec := range flushed(t, w) {
				typ, _ := rec.Schema().Metadata().GetValue(schema.MetaResourceType)
				out[typ] = append(out[typ], rec)
			}
		}
		for i, line := range lines {
			if _, err := w.Process(line); err != nil {
				t.Fatalf("line %d: %v", i+1, err)
			}
			if i%97 == 96 {
				take()
			}
		}
		take()
		return out
	}
	want, got := convert(memory.NewGoAllocator()), convert(dirtyAllocator{})
	if len(want) == 0 || len(got) != len(want) {
		t.Fatalf("%d types on dirty memory, %d on zeroed memory", len(got), len(want))
	}
	buffers := 0
	for typ, recs := range want {
		if len(got[typ]) != len(recs) {
			t.Fatalf("%s: %d records on dirty memory, %d on zeroed memory", typ, len(got[typ]), len(recs))
		}
		for i, rec := range recs {
			for c := range int(rec.NumCols()) {
				where := fmt.Sprintf("%s record %d column %s", typ, i, rec.ColumnName(c))
				buffers += sameBuffers(t, where, rec.Column(c).Data(), got[typ][i].Column(c).Data())
			}
		}
	}
	t.Logf("%d buffers compared", buffers)
}

// sameBuffers reports differences between the buffers of two arrays and their children, and returns how many
// buffers it compared.
func sameBuffers(t *testing.T, where string, want, got arrow.ArrayData) int {
	t.Helper()
	wb, gb := want.Buffers(), got.Buffers()
	if want.Len() != got.Len() || len(wb) != len(gb) || len(want.Children()) != len(got.Children()) {
		t.Fatalf("%s: shapes differ", where)
	}
	n := 0
	for i := range wb {
		if (wb[i] == nil) != (gb[i] == nil) {
			t.Fatalf("%s: buffer %d present on one side only", where, i)
		}
		if wb[i] != nil && !bytes.Equal(wb[i].Bytes(), gb[i].Bytes()) {
			t.Errorf("%s: buffer %d differs on memory that was not zeroed", where, i)
		}
		n++
	}
	for i := range want.Children() {
		n += sameBuffers(t, fmt.Sprintf("%s child %d", where, i), want.Children()[i], got.Children()[i])
	}
	return n
}
