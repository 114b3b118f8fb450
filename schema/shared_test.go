package schema

import (
	"slices"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
)

// TestSharedMatchesNodes checks, for every node of every type at three recursion depths, that the Arrow type and
// the key map it shares with other nodes are its own: the struct of its children's fields, and a key for each
// child (and for a primitive child, its "_" companion) that leads to that child.
func TestSharedMatchesNodes(t *testing.T) {
	for _, depth := range []int{1, 2, 3} {
		r := newRegistry(t, Options{RecursionDepth: depth})
		nodes, keyTables, structs := 0, map[*KeyTable[Member]]bool{}, map[arrow.DataType]bool{}
		var walk func(n *Node)
		walk = func(n *Node) {
			nodes++
			if n.Kind != Struct && n.Kind != Choice {
				if n.keys != nil {
					t.Errorf("%s (%s) has a key map", n.Path(), n.Kind)
				}
				return
			}
			fields := make([]arrow.Field, len(n.Children))
			for i, c := range n.Children {
				fields[i] = c.Field()
			}
			if want := arrow.StructOf(fields...); !arrow.TypeEqual(n.Leaf(), want) {
				t.Errorf("%s: type %s, want the struct of its children %s", n.Path(), n.Leaf(), want)
			}
			structs[n.Leaf()] = true
			if n.Kind == Struct {
				keyTables[n.keys] = true
				want := 0
				for i, c := range n.Children {
					var keys []string
					var members []Member
					switch {
					case c.Derived != NotDerived:
					case c.Kind == Choice:
						for j, cc := range c.Children {
							keys = append(keys, c.Name+upperFirst(cc.Name))
							members = append(members, Member{Child: i, Choice: j})
							if cc.Kind == Primitive {
								keys = append(keys, "_"+c.Name+upperFirst(cc.Name))
								members = append(members, Member{Child: i, Choice: j, Under: true})
							}
						}
					default:
						keys = append(keys, c.Name)
						members = append(members, Member{Child: i, Choice: -1})
						if c.Kind == Primitive {
							keys = append(keys, "_"+c.Name)
							members = append(members, Member{Child: i, Choice: -1, Under: true})
						}
					}
					for k, key := range keys {
						if got, ok := n.Lookup([]byte(key)); !ok || got != members[k] {
							t.Errorf("%s: Lookup(%q) = %+v, %v; want %+v", n.Path(), key, got, ok, members[k])
						}
					}
					want += len(keys)
				}
				if n.keys.Len() != want {
					t.Errorf("%s: %d keys, want %d", n.Path(), n.keys.Len(), want)
				}
			}
			for _, c := range n.Children {
				walk(c)
			}
		}
		for _, typ := range r.Types() {
			res, err := r.Build(typ)
			if err != nil {
				t.Fatal(err)
			}
			walk(res.Root)
		}
		// The point of sharing: far fewer key maps and struct types than nodes.
		if len(keyTables)*20 > nodes || len(structs)*20 > nodes {
			t.Errorf("depth %d: %d nodes share %d key maps and %d struct types; want a twentieth or fewer", depth, nodes,
				len(keyTables), len(structs))
		}
		t.Logf("depth %d: %d nodes, %d key maps, %d struct types", depth, nodes, len(keyTables), len(structs))
	}
}

// TestSharedOrderIndependent builds every type in the reverse order, sharing from different first builds: the
// schemas must be the same.
func TestSharedOrderIndependent(t *testing.T) {
	a := newRegistry(t, Options{})
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	types := b.Types()
	slices.Reverse(types)
	for _, typ := range types {
		if _, err := b.Build(typ); err != nil {
			t.Fatal(err)
		}
	}
	for _, typ := range types {
		ra, _ := a.Resource(typ)
		rb, _ := b.Resource(typ)
		if !ra.Schema.Equal(rb.Schema) || Format(ra.Schema) != Format(rb.Schema) {
			t.Errorf("%s: built in another order, the schema differs", typ)
		}
	}
}
