package sinks

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// decodeHybrid decodes n values of width bits from the RLE/bit-packed hybrid encoding, as the Parquet
// specification defines it: a ULEB128 header whose low bit says a bit-packed run (header>>1 groups of 8 values,
// packed from the least significant bit) or an RLE run (header>>1 repeats of a value in (width+7)/8 bytes, little
// endian). It is written from the specification, to check rleEncoder against something other than itself.
func decodeHybrid(b []byte, width, n int) ([]uint32, error) {
	var out []uint32
	for len(out) < n {
		h, k := binary.Uvarint(b)
		if k <= 0 {
			return out, fmt.Errorf("bad run header after %d values", len(out))
		}
		b = b[k:]
		if h&1 == 1 {
			bitsLen := int(h>>1) * 8 * width
			if len(b)*8 < bitsLen {
				return out, fmt.Errorf("bit-packed run of %d bits, %d bytes left", bitsLen, len(b))
			}
			for i := 0; i < int(h>>1)*8; i++ {
				var v uint32
				for j := 0; j < width; j++ {
					bit := i*width + j
					v |= uint32(b[bit/8]>>(bit%8)&1) << j
				}
				out = append(out, v)
			}
			b = b[(bitsLen+7)/8:]
			continue
		}
		nb := (width + 7) / 8
		if len(b) < nb {
			return out, fmt.Errorf("RLE run value of %d bytes, %d left", nb, len(b))
		}
		var v uint32
		for j := 0; j < nb; j++ {
			v |= uint32(b[j]) << (8 * j)
		}
		b = b[nb:]
		for range h >> 1 {
			out = append(out, v)
		}
	}
	return out[:n], nil
}

// TestRLEEncoderRoundTrip encodes runs of random lengths and values at every width a level or a dictionary index
// takes, the way chunks put them (put, then finish or finishRuns), and decodes the result by the specification.
func TestRLEEncoderRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 17))
	for width := 1; width <= 24; width++ {
		for trial := range 40 {
			var want []uint32
			var e rleEncoder
			e.reset(width)
			runs := 1 + rng.IntN(300)
			for range runs {
				v := uint32(rng.Uint64() & (1<<width - 1))
				n := 1 + rng.IntN(4)
				switch rng.IntN(5) {
				case 0:
					n = 1 + rng.IntN(40) // long enough to be an RLE run
				case 1:
					n = 1 + rng.IntN(2000) // past the 1024 literals that force a flush
				}
				e.put(v, n)
				for range n {
					want = append(want, v)
				}
			}
			runsOnly := trial%2 == 1
			var got []byte
			if runsOnly {
				got = e.finishRuns()
			} else {
				got = e.finish()
			}
			dec, err := decodeHybrid(got, width, len(want))
			if err != nil {
				t.Fatalf("width %d trial %d: %v", width, trial, err)
			}
			if !slices.Equal(dec, want) {
				i := 0
				for i < len(want) && dec[i] == want[i] {
					i++
				}
				t.Fatalf("width %d trial %d: value %d of %d decodes as %d, want %d", width, trial, i, len(want), dec[i], want[i])
			}
			if runsOnly {
				// finishRuns holds exactly the values put: nothing may follow them.
				if all, err := decodeHybrid(got, width, len(want)+1); err == nil {
					t.Fatalf("width %d trial %d: finishRuns encodes %d values, want %d", width, trial, len(all), len(want))
				}
			}
		}
	}
}
