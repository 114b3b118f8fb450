package sinks

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestDictIndexMatchesMap puts values with many repeats into a dictIndex and a map side by side, through resets
// and growth, and checks that both give every value the same id.
func TestDictIndexMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var x dictIndex
	for round, n := range []int{10, 5000, 3, 100000, 700} {
		x.reset()
		if x.used != 0 {
			t.Fatalf("round %d: reset left %d entries", round, x.used)
		}
		if len(x.slots) > dictIndexKeep {
			t.Fatalf("round %d: reset kept %d slots", round, len(x.slots))
		}
		var d dictionary
		ids := map[string]int32{}
		for range n {
			b := fmt.Appendf(nil, "Patient/%d", rng.IntN(n/2+1))
			h := hashBytes(b)
			x.reserve()
			id, slot := x.findBytes(h, b, &d)
			want, ok := ids[string(b)]
			if !ok {
				want = int32(d.len())
				ids[string(b)] = want
			}
			if id < 0 {
				if ok {
					t.Fatalf("round %d: %q, entered as %d, not found", round, b, want)
				}
				x.insert(slot, h, int32(d.len()))
				addValue(&d, b)
				id = want
			}
			if id != want {
				t.Fatalf("round %d: %q found as %d, want %d", round, b, id, want)
			}
		}
		if x.used != len(ids) || 2*x.used > len(x.slots) {
			t.Fatalf("round %d: %d entries in %d slots, want %d entries at most half full", round, x.used, len(x.slots), len(ids))
		}
	}
}

// addValue appends byte array value b to d, as putBytes does.
func addValue(d *dictionary, b []byte) {
	d.starts = append(d.starts, uint32(len(d.plain)))
	d.plain = binary.LittleEndian.AppendUint32(d.plain, uint32(len(b)))
	d.plain = append(d.plain, b...)
}

// TestDictIndexSameHash gives different values the same hash, so that only the comparison with the values
// tells them apart.
func TestDictIndexSameHash(t *testing.T) {
	var x dictIndex
	var d dictionary
	for i := range 40 {
		b := []byte{byte(i)}
		x.reserve()
		if id, slot := x.findBytes(7, b, &d); id >= 0 {
			t.Fatalf("value %d found as %d before it was put", i, id)
		} else {
			x.insert(slot, 7, int32(i))
		}
		addValue(&d, b)
	}
	for i := range 40 {
		x.reserve()
		if id, _ := x.findBytes(7, []byte{byte(i)}, &d); id != int32(i) {
			t.Fatalf("value %d found as %d", i, id)
		}
	}
}

// TestDictIndexNumbers checks int64 and float64 values, floats by their bits: 0 and -0, and NaNs of different
// payloads, are different values; whole numbers, whose low bits are all zero, must not pile up in one slot run.
func TestDictIndexNumbers(t *testing.T) {
	floats := []float64{0, math.Copysign(0, -1), math.NaN(), math.Float64frombits(0x7ff8000000000002), 72, 72.5, -1,
		math.Inf(1), math.Inf(-1), 1e300}
	for i := range 2000 {
		floats = append(floats, float64(i+100)) // apart from the values above
	}
	var x dictIndex
	var vals []float64
	for pass := range 2 {
		for i, v := range floats {
			u := math.Float64bits(v)
			h := hashNum(u)
			x.reserve()
			id, slot := x.findNum(h, u, bitsOf(vals))
			if pass == 0 {
				if id >= 0 {
					t.Fatalf("float %d (%v) found as %d before it was put", i, v, id)
				}
				x.insert(slot, h, int32(len(vals)))
				vals = append(vals, v)
			} else if id != int32(i) {
				t.Fatalf("float %d (%v) found as %d", i, v, id)
			}
		}
	}
	// Whole numbers hash apart: the longest run of occupied slots stays short.
	run, longest := 0, 0
	for _, s := range x.slots {
		if s == 0 {
			run = 0
			continue
		}
		run++
		longest = max(longest, run)
	}
	if longest > 64 {
		t.Errorf("a run of %d occupied slots among %d: whole numbers hash together", longest, len(x.slots))
	}

	var xi dictIndex
	var ints []int64
	for _, v := range []int64{0, -1, 1, math.MinInt64, math.MaxInt64, 1 << 40, 2 << 40, 3 << 40, 0, 1 << 40} {
		h := hashNum(uint64(v))
		xi.reserve()
		id, slot := xi.findNum(h, uint64(v), bitsOf(ints))
		if id < 0 {
			xi.insert(slot, h, int32(len(ints)))
			ints = append(ints, v)
			continue
		}
		if ints[id] != v {
			t.Fatalf("%d found as %d, which is %d", v, id, ints[id])
		}
	}
	if len(ints) != 8 {
		t.Fatalf("%d distinct ints entered, want 8: %v", len(ints), ints)
	}
}
