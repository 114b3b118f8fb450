package schema

import "encoding/binary"

// KeyTable maps the JSON keys of one FHIR object type to values: a Go map[string]V for what it does, built once
// and then only read. FHIR keys are short ASCII names, and looking one up is on the hot path of every decoder, for
// every member of every object; a Go map hashes the whole key with a general-purpose hash. KeyTable hashes
// the key's length and its first and last eight bytes (all of a key of up to 16 bytes) with one multiplication,
// and probes an open-addressed table that is at most half full. A slot keeps those words too, so that a key of up
// to 16 bytes is matched by comparing two words, without a call to compare memory.
type KeyTable[V any] struct {
	slots []keySlot[V]
	mask  uint32
	n     int
}

type keySlot[V any] struct {
	key        string
	head, tail uint64 // keyWords of key
	used       bool
	val        V
}

// Len is the number of keys.
func (t *KeyTable[V]) Len() int { return t.n }

// Put sets key's value and reports whether key was new. It is not safe for use concurrently with Get.
func (t *KeyTable[V]) Put(key string, v V) bool {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	head, tail := keyWords([]byte(key))
	i := keyHash(head, tail, len(key)) & t.mask
	for ; t.slots[i].used; i = (i + 1) & t.mask {
		if t.slots[i].key == key {
			t.slots[i].val = v
			return false
		}
	}
	t.slots[i] = keySlot[V]{key: key, head: head, tail: tail, used: true, val: v}
	t.n++
	return true
}

func (t *KeyTable[V]) grow() {
	old := t.slots
	size := max(8, 2*len(old))
	t.slots, t.mask, t.n = make([]keySlot[V], size), uint32(size-1), 0
	for _, s := range old {
		if s.used {
			t.Put(s.key, s.val)
		}
	}
}

// Get returns key's value. It does not allocate.
func (t *KeyTable[V]) Get(key []byte) (V, bool) {
	if t.n > 0 {
		n := len(key)
		head, tail := keyWords(key)
		for i := keyHash(head, tail, n) & t.mask; t.slots[i].used; i = (i + 1) & t.mask {
			s := &t.slots[i]
			// The words hold all of a key of up to 16 bytes; a longer one also compares its middle.
			if s.head == head && s.tail == tail && len(s.key) == n && (n <= 16 || s.key[8:n-8] == string(key[8:n-8])) {
				return s.val, true
			}
		}
	}
	var zero V
	return zero, false
}

// keyWords returns words that hold all the bytes of a key of up to 16 bytes, given its length: the first and
// last eight bytes; for a shorter key, its first and last four bytes (or, under four, its first, middle and last
// byte) in head, and a zero tail.
func keyWords(k []byte) (head, tail uint64) {
	n := len(k)
	switch {
	case n >= 8:
		return binary.LittleEndian.Uint64(k), binary.LittleEndian.Uint64(k[n-8:])
	case n >= 4:
		return uint64(binary.LittleEndian.Uint32(k)) | uint64(binary.LittleEndian.Uint32(k[n-4:]))<<32, 0
	case n > 0:
		return uint64(k[0]) | uint64(k[n/2])<<8 | uint64(k[n-1])<<16, 0
	}
	return 0, 0
}

// keyHash mixes a key's length with its words (keyWords).
func keyHash(head, tail uint64, n int) uint32 {
	x := head ^ bitsRotate(tail)
	x ^= uint64(n) << 56
	x *= 0x9e3779b97f4a7c15
	return uint32(x >> 32)
}

func bitsRotate(x uint64) uint64 { return x<<29 | x>>35 }
