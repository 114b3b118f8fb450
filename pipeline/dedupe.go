package pipeline

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"unsafe"
)

// keySet is the set of resource versions a run has written from per-Patient objects, where the resources that
// several Patients share (Organization, Practitioner, Medication, Location ...) repeat in every block that needs
// them. It holds a 128-bit hash of (type, id, version) per resource, never the key itself: two distinct resources
// are taken for one with a probability of about n²/2¹²⁹ (n resources), nil in practice.
//
// Memory: 16 bytes per resource in open-addressing tables kept between 3/8 and 3/4 full, so 21 to 43 bytes per
// resource: 34 MB per million resources in BenchmarkKeySet, 43 MB at most, whatever the size of the resources.
// The set is split in 64 shards that grow one at a time, so growing never needs twice the whole set.
//
// It is safe for concurrent use: a key's shard is locked while the key is tested and set, so exactly one of
// several goroutines adding the same key sees it as new.
type keySet struct {
	seeds  [2]maphash.Seed
	shards [keyShards]keyShard
	// keys and mem are the keys held and the bytes of the shards' tables, for Progress.
	keys, mem atomic.Int64
	// limit, when above zero, is the most keys the set takes (Options.DedupeKeys): past it, add reports a key
	// it does not hold as new but not held.
	limit int64
}

const keyShards = 64

type keyShard struct {
	mu    sync.Mutex
	slots [][2]uint64 // linear probing; the zero key marks a free slot
	n     int
	_     [24]byte // keep shards on separate cache lines
}

// newKeySet returns an empty set that takes at most limit keys (Options.DedupeKeys); zero or less: no bound.
func newKeySet(limit int) *keySet {
	return &keySet{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, limit: int64(max(limit, 0))}
}

// add records the resource version (typ, id, version) and reports whether it is new, and whether the set holds
// it now (false only for a new key past the limit).
func (s *keySet) add(typ, id, version string) (isNew, held bool) {
	k := [2]uint64{s.hash(0, typ, id, version), s.hash(1, typ, id, version)}
	if k == ([2]uint64{}) {
		k[1] = 1 // the zero key marks free slots
	}
	sh := &s.shards[k[0]%keyShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s.limit > 0 && s.keys.Load() >= s.limit {
		return !sh.has(k), false
	}
	slots := len(sh.slots)
	added := sh.add(k)
	if added {
		s.keys.Add(1)
	}
	if grown := len(sh.slots) - slots; grown != 0 {
		s.mem.Add(int64(grown) * int64(unsafe.Sizeof(sh.slots[0])))
	}
	return added, true
}

// has reports whether the shard holds k.
func (sh *keyShard) has(k [2]uint64) bool {
	if len(sh.slots) == 0 {
		return false
	}
	_, found := sh.find(k)
	return found
}

func (sh *keyShard) add(k [2]uint64) bool {
	if (sh.n+1)*4 > len(sh.slots)*3 {
		sh.grow()
	}
	i, found := sh.find(k)
	if found {
		return false
	}
	sh.slots[i] = k
	sh.n++
	return true
}

// find returns the slot that holds k, or else the free slot where k would go, and whether k is there. The table
// has a free slot.
func (sh *keyShard) find(k [2]uint64) (uint64, bool) {
	mask := uint64(len(sh.slots) - 1)
	for i := k[1] & mask; ; i = (i + 1) & mask {
		switch sh.slots[i] {
		case k:
			return i, true
		case [2]uint64{}:
			return i, false
		}
	}
}

func (sh *keyShard) grow() {
	old := sh.slots
	sh.slots = make([][2]uint64, max(64, 2*len(old)))
	sh.n = 0
	for _, k := range old {
		if k != ([2]uint64{}) {
			sh.add(k)
		}
	}
}

func (s *keySet) hash(i int, typ, id, version string) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seeds[i])
	h.WriteString(typ)
	h.WriteByte(0)
	h.WriteString(id)
	h.WriteByte(0)
	h.WriteString(version)
	return h.Sum64()
}

// len returns the number of keys held.
func (s *keySet) len() int {
	n := 0
	for i := range s.shards {
		s.shards[i].mu.Lock()
		n += s.shards[i].n
		s.shards[i].mu.Unlock()
	}
	return n
}
