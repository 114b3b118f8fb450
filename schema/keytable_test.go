package schema

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// each calls f for every key and value of t, in no particular order: the keys a node's table was built with.
func (t *KeyTable[V]) each(f func(key string, v V)) {
	for _, s := range t.slots {
		if s.used {
			f(s.key, s.val)
		}
	}
}

// TestKeyTableAgreesWithMap puts the JSON keys of every node of a few wide types, and keys built to collide on
// what KeyTable hashes (same length, same first and last eight bytes), into a KeyTable and a map, and looks up
// each key, near misses and prefixes in both.
func TestKeyTableAgreesWithMap(t *testing.T) {
	reg := newRegistry(t, Options{})
	var keySets [][]string
	for _, typ := range []string{"ExplanationOfBenefit", "Observation", "Patient"} {
		res, err := reg.Build(typ)
		if err != nil {
			t.Fatal(err)
		}
		var walk func(n *Node)
		walk = func(n *Node) {
			if n.Kind == Struct {
				var keys []string
				n.keys.each(func(k string, _ Member) { keys = append(keys, k) })
				keySets = append(keySets, keys)
			}
			for _, c := range n.Children {
				walk(c)
			}
		}
		walk(res.Root)
	}
	var colliding []string
	for i := range 40 {
		colliding = append(colliding, fmt.Sprintf("abcdefgh%02dzzzzzzzz", i), fmt.Sprintf("abcdefgh%03dzzzzzzzz", i))
	}
	keySets = append(keySets, colliding, nil, []string{""}, []string{"a", "b", "ab", "ba"})
	// Keys of every length up to 18 that differ from each other in one byte, at every position: a slot matches a
	// key of up to 16 bytes by its words alone, so those must hold every byte.
	for n := 1; n <= 18; n++ {
		base := []byte("abcdefghijklmnopqr"[:n])
		keys := []string{string(base)}
		for i := range n {
			b := append([]byte(nil), base...)
			b[i] = 'Z'
			keys = append(keys, string(b))
		}
		keySets = append(keySets, keys)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, keys := range keySets {
		var kt KeyTable[int]
		want := map[string]int{}
		for i, k := range keys {
			if _, seen := want[k]; kt.Put(k, i) == seen {
				t.Fatalf("Put(%q) reported new wrongly", k)
			}
			want[k] = i
		}
		if kt.Len() != len(want) {
			t.Fatalf("Len %d, want %d", kt.Len(), len(want))
		}
		probes := []string{"", "x", "resourceType", "valueQuantityx"}
		for _, k := range keys {
			probes = append(probes, k, k+"x", "_"+k)
			if len(k) > 1 {
				probes = append(probes, k[:len(k)-1], k[1:])
				b := []byte(k)
				b[r.IntN(len(b))] ^= 1
				probes = append(probes, string(b))
			}
		}
		for _, p := range probes {
			got, ok := kt.Get([]byte(p))
			w, wok := want[p]
			if ok != wok || got != w {
				t.Fatalf("Get(%q) = %d, %v; want %d, %v", p, got, ok, w, wok)
			}
		}
	}
}

func TestKeyTableGetDoesNotAllocate(t *testing.T) {
	var kt KeyTable[Member]
	kt.Put("valueQuantity", Member{Child: 3})
	key := []byte("valueQuantity")
	if n := testing.AllocsPerRun(100, func() { kt.Get(key) }); n != 0 {
		t.Errorf("Get allocates %v times", n)
	}
}

func BenchmarkKeyLookup(b *testing.B) {
	keys := []string{"resourceType", "id", "meta", "status", "category", "code", "subject", "encounter",
		"effectiveDateTime", "issued", "valueQuantity", "value", "unit", "system", "display", "coding", "reference"}
	var kt KeyTable[int]
	m := map[string]int{}
	for i, k := range keys {
		kt.Put(k, i)
		m[k] = i
	}
	probes := make([][]byte, len(keys))
	for i, k := range keys {
		probes[i] = []byte(k)
	}
	b.Run("KeyTable", func(b *testing.B) {
		for b.Loop() {
			for _, p := range probes {
				kt.Get(p)
			}
		}
	})
	b.Run("map", func(b *testing.B) {
		for b.Loop() {
			for _, p := range probes {
				_ = m[string(p)]
			}
		}
	})
}
