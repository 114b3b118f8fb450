package sinks

import (
	"hash/maphash"
	"unsafe"
)

// dictIndex finds a dictionary's values by their hash. It replaces a Go map from value to id, which for the
// dictionaries of a wide table (hundreds of thousands of entries in all) cost about 40 bytes an entry and most
// of the time of a lookup in cache misses on its control words. Here an entry is one 8-byte slot in a table kept
// at most half full: open addressing with linear probing, each slot packing the value's 32-bit hash (high half)
// and its id + 1 (low half; 0 is an empty slot). The values themselves stay in the dictionary, by id, so the
// index is told what to compare against. The full hash is in the slot, so growing never hashes a value again.
type dictIndex struct {
	slots []uint64 // len a power of two, or 0
	used  int
}

// dictIndexKeep is the most slots an index keeps for the next chunk; a larger one is dropped, so that a leaf does
// not hold on to the index of the largest dictionary it ever had.
const dictIndexKeep = 1 << 10

// bytesSeed seeds the hash of byte array values. The dictionary keeps values in order of first appearance, so
// the output does not depend on it.
var bytesSeed = maphash.MakeSeed()

func hashBytes(b []byte) uint32 { return uint32(maphash.Bytes(bytesSeed, b)) }

// hashNum mixes the bits of an int64 or float64 value (murmur3's finalizer): floats such as 72.0 have zero low
// bits, and the low bits of the hash pick the slot.
func hashNum(v uint64) uint32 {
	v ^= v >> 33
	v *= 0xff51afd7ed558ccd
	v ^= v >> 33
	v *= 0xc4ceb9fe1a85ec53
	v ^= v >> 33
	return uint32(v)
}

// reset empties the index for a new chunk.
func (x *dictIndex) reset() {
	if len(x.slots) > dictIndexKeep {
		x.slots = nil
	} else {
		clear(x.slots)
	}
	x.used = 0
}

// bytes is the memory the index holds.
func (x *dictIndex) bytes() int { return 8 * len(x.slots) }

// reserve makes room for one more entry, so that the slot a lookup returns can take it.
func (x *dictIndex) reserve() {
	if 2*(x.used+1) <= len(x.slots) {
		return
	}
	old := x.slots
	x.slots = make([]uint64, max(16, 2*len(old)))
	mask := uint32(len(x.slots) - 1)
	for _, s := range old {
		if s == 0 {
			continue
		}
		i := uint32(s>>32) & mask
		for x.slots[i] != 0 {
			i = (i + 1) & mask
		}
		x.slots[i] = s
	}
}

// findBytes returns the id of b among the byte array values of d, or -1 and the slot where insert puts it.
// reserve must have been called since the last insert.
func (x *dictIndex) findBytes(h uint32, b []byte, d *dictionary) (id int32, slot int) {
	mask := uint32(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return -1, int(i)
		}
		if uint32(s>>32) == h {
			if id := int32(uint32(s)) - 1; string(d.value(id)) == string(b) {
				return id, int(i)
			}
		}
	}
}

// findNum is findBytes for an int64 value, or a float64 value by its bits (so that NaNs and -0 are values of their
// own): v is the value's bits, vals those of the values (bitsOf).
func (x *dictIndex) findNum(h uint32, v uint64, vals []uint64) (id int32, slot int) {
	mask := uint32(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return -1, int(i)
		}
		if uint32(s>>32) == h {
			if id := int32(uint32(s)) - 1; vals[id] == v {
				return id, int(i)
			}
		}
	}
}

// bitsOf views int64 or float64 values as their bits, without copying.
func bitsOf[T int64 | float64](vals []T) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(vals))), len(vals))
}

// insert puts id, of a value with hash h, into the empty slot a find returned.
func (x *dictIndex) insert(slot int, h uint32, id int32) {
	x.slots[slot] = uint64(h)<<32 | uint64(uint32(id+1))
	x.used++
}
