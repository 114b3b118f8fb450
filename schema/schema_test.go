package schema

import (
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
)

var update = flag.Bool("update", false, "rewrite the golden schemas in testdata/")

var (
	registriesMu sync.Mutex
	registries   = map[int]*Registry{}
)

// newRegistry returns the registry for opts, built once per depth for the package's tests.
func newRegistry(t *testing.T, opts Options) *Registry {
	t.Helper()
	registriesMu.Lock()
	defer registriesMu.Unlock()
	if r, ok := registries[opts.RecursionDepth]; ok {
		return r
	}
	r, err := New(opts)
	if err != nil {
		t.Fatalf("New(%+v): %v", opts, err)
	}
	registries[opts.RecursionDepth] = r
	return r
}

func TestGolden(t *testing.T) {
	r := newRegistry(t, Options{})
	tests := []struct {
		name string
	}{
		{name: "Patient"},
		{name: "Observation"},
		{name: "Encounter"},
		{name: "ExplanationOfBenefit"},
		{name: "QuestionnaireResponse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, ok := r.Resource(tt.name)
			if !ok {
				t.Fatalf("Resource(%q) not found", tt.name)
			}
			got := Format(res.Schema)
			path := filepath.Join("testdata", tt.name+".schema.txt")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create): %v", err)
			}
			if got != string(want) {
				t.Errorf("schema of %s differs from %s; run go test ./schema -update and review the diff", tt.name, path)
			}
		})
	}
}

func TestAllTypes(t *testing.T) {
	r := newRegistry(t, Options{})
	types := r.Types()
	if len(types) != 146 {
		t.Fatalf("Types() has %d types, want 146", len(types))
	}
	for _, typ := range types {
		res, ok := r.Resource(typ)
		if !ok {
			t.Fatalf("Resource(%q) missing", typ)
		}
		if res.Type != typ {
			t.Errorf("Resource(%q).Type = %q", typ, res.Type)
		}
		if len(res.Schema.Fields()) == 0 || len(res.Fields) != len(res.Schema.Fields()) {
			t.Errorf("%s: %d schema fields, %d nodes", typ, len(res.Schema.Fields()), len(res.Fields))
		}
		for i, f := range res.Schema.Fields() {
			if res.Fields[i].Name != f.Name || !arrow.TypeEqual(res.Fields[i].Type, f.Type) {
				t.Errorf("%s: field %d %s does not match node %s", typ, i, f.Name, res.Fields[i].Name)
			}
			walkFields(f, typ, func(path string, f arrow.Field) {
				if !f.Nullable {
					t.Errorf("%s is not nullable", path)
				}
			})
		}
		if _, ok := res.Root.Lookup([]byte("resourceType")); ok {
			t.Errorf("%s has a resourceType column", typ)
		}
		for _, k := range []string{MetaSchemaVersion, MetaFHIRVersion, MetaResourceType, MetaRecursionDepth} {
			if _, ok := res.Schema.Metadata().GetValue(k); !ok {
				t.Errorf("%s: metadata %s missing", typ, k)
			}
		}
		if v, _ := res.Schema.Metadata().GetValue(MetaResourceType); v != typ {
			t.Errorf("%s: metadata %s = %q", typ, MetaResourceType, v)
		}
	}
}

func walkFields(f arrow.Field, path string, fn func(string, arrow.Field)) {
	path += "." + f.Name
	fn(path, f)
	typ := f.Type
	if l, ok := typ.(*arrow.ListType); ok {
		fn(path+"[]", l.ElemField())
		typ = l.Elem()
	}
	if st, ok := typ.(*arrow.StructType); ok {
		for _, c := range st.Fields() {
			walkFields(c, path, fn)
		}
	}
}

func TestDeterministic(t *testing.T) {
	a := newRegistry(t, Options{})
	b, err := New(Options{RecursionDepth: DefaultRecursionDepth})
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range a.Types() {
		ra, _ := a.Resource(typ)
		rb, _ := b.Resource(typ)
		if !ra.Schema.Equal(rb.Schema) || Format(ra.Schema) != Format(rb.Schema) {
			t.Errorf("%s: two builds differ", typ)
		}
	}
}

// TestRecursionDepth checks that the depth option changes exactly the types that nest a type inside itself, and
// that it never cuts anything else.
func TestRecursionDepth(t *testing.T) {
	base := newRegistry(t, Options{})
	tests := []struct {
		name  string
		depth int
	}{
		{name: "depth1", depth: 1},
		{name: "depth3", depth: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := newRegistry(t, Options{RecursionDepth: tt.depth})
			changed := 0
			for _, typ := range base.Types() {
				rb, _ := base.Resource(typ)
				ro, _ := other.Resource(typ)
				differs := !rb.Schema.Equal(ro.Schema)
				if differs {
					changed++
				}
				if recursive := hasCut(rb.Root); differs != recursive {
					t.Errorf("%s: schema differs=%v at depth %d but has cut recursion=%v at depth 2", typ, differs, tt.depth, recursive)
				}
			}
			if changed == 0 {
				t.Errorf("depth %d changed no type", tt.depth)
			}
		})
	}
	d1 := newRegistry(t, Options{RecursionDepth: 1})
	cases := []struct {
		name     string
		registry *Registry
		typ      string
		path     []string
		kind     Kind
	}{
		{name: "assigner identifier kept at 2", registry: base, typ: "Patient", path: []string{"identifier", "assigner", "identifier"}, kind: Struct},
		{name: "second assigner identifier cut at 2", registry: base, typ: "Patient", path: []string{"identifier", "assigner", "identifier", "assigner", "identifier"}, kind: JSON},
		{name: "assigner identifier cut at 1", registry: d1, typ: "Patient", path: []string{"identifier", "assigner", "identifier"}, kind: JSON},
		{name: "item.item kept at 2", registry: base, typ: "QuestionnaireResponse", path: []string{"item", "item"}, kind: Struct},
		{name: "item.item.item cut at 2", registry: base, typ: "QuestionnaireResponse", path: []string{"item", "item", "item"}, kind: JSON},
		{name: "answer.item kept at 2", registry: base, typ: "QuestionnaireResponse", path: []string{"item", "answer", "item"}, kind: Struct},
		{name: "concept.concept kept at 2", registry: base, typ: "CodeSystem", path: []string{"concept", "concept"}, kind: Struct},
		{name: "concept.concept.concept cut at 2", registry: base, typ: "CodeSystem", path: []string{"concept", "concept", "concept"}, kind: JSON},
		{name: "non-recursive nesting never cut at 1", registry: d1, typ: "ExplanationOfBenefit", path: []string{"item", "detail", "subDetail", "quantity", "value"}, kind: Primitive},
		{name: "extension is JSON", registry: base, typ: "Patient", path: []string{"name", "extension"}, kind: JSON},
		{name: "modifierExtension is JSON", registry: base, typ: "Patient", path: []string{"contact", "modifierExtension"}, kind: JSON},
		{name: "contained is JSON", registry: base, typ: "Patient", path: []string{"contained"}, kind: JSON},
		{name: "bundle entry resource is JSON", registry: base, typ: "Bundle", path: []string{"entry", "resource"}, kind: JSON},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			res, _ := tt.registry.Resource(tt.typ)
			n := find(res.Root, tt.path)
			if n == nil {
				t.Fatalf("%s.%s not found", tt.typ, strings.Join(tt.path, "."))
			}
			if n.Kind != tt.kind {
				t.Errorf("%s kind = %v, want %v", n.Path(), n.Kind, tt.kind)
			}
		})
	}
}

func find(n *Node, path []string) *Node {
	for _, name := range path {
		var next *Node
		for _, c := range n.Children {
			if c.Name == name {
				next = c
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}

func hasCut(n *Node) bool {
	if n.Cut {
		return true
	}
	for _, c := range n.Children {
		if hasCut(c) {
			return true
		}
	}
	return false
}

func TestShape(t *testing.T) {
	r := newRegistry(t, Options{})
	tests := []struct {
		name     string
		typ      string
		path     []string
		kind     Kind
		scalar   Scalar
		repeated bool
		arrow    string
	}{
		{name: "boolean", typ: "Patient", path: []string{"active"}, kind: Primitive, scalar: Bool, arrow: "bool"},
		{name: "date verbatim", typ: "Patient", path: []string{"birthDate"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "enum code", typ: "Patient", path: []string{"gender"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "repeated string", typ: "Patient", path: []string{"name", "given"}, kind: Primitive, scalar: String, repeated: true, arrow: "list<item: utf8, nullable>"},
		{name: "choice boolean", typ: "Patient", path: []string{"deceased", "boolean"}, kind: Primitive, scalar: Bool, arrow: "bool"},
		{name: "choice dateTime", typ: "Patient", path: []string{"deceased", "dateTime"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "integer", typ: "Patient", path: []string{"multipleBirth", "integer"}, kind: Primitive, scalar: Int, arrow: "int64"},
		{name: "decimal", typ: "Observation", path: []string{"value", "quantity", "value"}, kind: Primitive, scalar: Float, arrow: "float64"},
		{name: "choice string", typ: "Observation", path: []string{"value", "string"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "instant", typ: "Observation", path: []string{"issued"}, kind: Primitive, scalar: Timestamp, arrow: "timestamp[us, tz=UTC]"},
		{name: "base64Binary", typ: "Binary", path: []string{"data"}, kind: Primitive, scalar: Binary, arrow: "binary"},
		{name: "positiveInt", typ: "ExplanationOfBenefit", path: []string{"item", "sequence"}, kind: Primitive, scalar: Int, arrow: "int64"},
		{name: "reference verbatim", typ: "Observation", path: []string{"subject", "reference"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "reference type", typ: "Observation", path: []string{"subject", "referenceType"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "reference id", typ: "Observation", path: []string{"subject", "referenceId"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "reference type element", typ: "Observation", path: []string{"subject", "type"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "reference identifier", typ: "Observation", path: []string{"subject", "identifier", "value"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "xhtml", typ: "Observation", path: []string{"text", "div"}, kind: Primitive, scalar: String, arrow: "utf8"},
		{name: "primitive extensions", typ: "Observation", path: []string{PrimitiveExtensionsColumn}, kind: JSON, arrow: "utf8"},
		{name: "repeated extension", typ: "Observation", path: []string{"extension"}, kind: JSON, repeated: true, arrow: "list<item: utf8, nullable>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _ := r.Resource(tt.typ)
			n := find(res.Root, tt.path)
			if n == nil {
				t.Fatalf("%s.%s not found", tt.typ, strings.Join(tt.path, "."))
			}
			if n.Kind != tt.kind || n.Scalar != tt.scalar || n.Repeated != tt.repeated || n.Type.String() != tt.arrow {
				t.Errorf("%s = kind %v scalar %v repeated %v arrow %s, want %v %v %v %s", n.Path(), n.Kind, n.Scalar, n.Repeated,
					n.Type, tt.kind, tt.scalar, tt.repeated, tt.arrow)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	r := newRegistry(t, Options{})
	obs, _ := r.Resource("Observation")
	tests := []struct {
		name   string
		key    string
		ok     bool
		child  string
		choice string
		under  bool
	}{
		{name: "plain", key: "status", ok: true, child: "status"},
		{name: "choice", key: "valueQuantity", ok: true, child: "value", choice: "quantity"},
		{name: "choice primitive companion", key: "_valueString", ok: true, child: "value", choice: "string", under: true},
		{name: "primitive companion", key: "_issued", ok: true, child: "issued", under: true},
		{name: "complex has no companion", key: "_code", ok: false},
		{name: "bare choice name", key: "value", ok: false},
		{name: "resourceType", key: "resourceType", ok: false},
		{name: "derived not in JSON", key: PrimitiveExtensionsColumn, ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ok := obs.Root.Lookup([]byte(tt.key))
			if ok != tt.ok {
				t.Fatalf("Lookup(%q) ok = %v", tt.key, ok)
			}
			if !ok {
				return
			}
			c := obs.Root.Children[m.Child]
			choice := ""
			if m.Choice >= 0 {
				choice = c.Children[m.Choice].Name
			}
			if c.Name != tt.child || choice != tt.choice || m.Under != tt.under {
				t.Errorf("Lookup(%q) = %s/%s/%v", tt.key, c.Name, choice, m.Under)
			}
		})
	}
}

func TestDepthOption(t *testing.T) {
	if _, err := New(Options{RecursionDepth: -1}); err == nil {
		t.Fatal("New with depth -1: no error")
	}
	tests := []struct {
		name  string
		depth int
		want  string
	}{
		{name: "default", depth: 0, want: "2"},
		{name: "explicit", depth: 3, want: "3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, Options{RecursionDepth: tt.depth})
			res, _ := r.Resource("Patient")
			if got, _ := res.Schema.Metadata().GetValue(MetaRecursionDepth); got != tt.want || strconv.Itoa(r.RecursionDepth()) != tt.want {
				t.Errorf("recursion depth metadata %q, RecursionDepth() %d; want %s", got, r.RecursionDepth(), tt.want)
			}
		})
	}
}

func TestBuildUnknownType(t *testing.T) {
	r := newRegistry(t, Options{})
	if _, err := r.Build("Patients"); err == nil || !strings.Contains(err.Error(), `"Patients" is not an R4 resource type`) {
		t.Errorf("Build(Patients) = %v, want an error naming the type", err)
	}
	if res, err := r.Build("Patient"); err != nil || res.Type != "Patient" {
		t.Errorf("Build(Patient) = %v, %v", res, err)
	}
}

// TestNodePath: a node's path is made from its ancestors (Node.Path), as the builder names elements: a choice
// element ends in "[x]", a choice's child is the element with its type capitalised, a derived column and the
// primitive extensions column hang off their parent.
func TestNodePath(t *testing.T) {
	r := newRegistry(t, Options{})
	tests := []struct {
		typ  string
		path []string
		want string
	}{
		{"Patient", nil, "Patient"},
		{"Patient", []string{"name", "given"}, "Patient.name.given"},
		{"Patient", []string{"deceased"}, "Patient.deceased[x]"},
		{"Patient", []string{"deceased", "dateTime"}, "Patient.deceasedDateTime"},
		{"Observation", []string{"value", "quantity", "value"}, "Observation.valueQuantity.value"},
		{"Observation", []string{"component", "value", "codeableConcept", "coding", "code"}, "Observation.component.valueCodeableConcept.coding.code"},
		{"Observation", []string{"subject", "referenceId"}, "Observation.subject.referenceId"},
		{"Observation", []string{PrimitiveExtensionsColumn}, "Observation." + PrimitiveExtensionsColumn},
	}
	for _, tt := range tests {
		res, err := r.Build(tt.typ)
		if err != nil {
			t.Fatal(err)
		}
		n := find(res.Root, tt.path)
		if n == nil {
			t.Errorf("%s: no node at %v", tt.typ, tt.path)
			continue
		}
		if got := n.Path(); got != tt.want {
			t.Errorf("%s %v: Path() = %q, want %q", tt.typ, tt.path, got, tt.want)
		}
	}
}

// TestBuildKeepsHeldSchemas: the Registry gives the same Resource while a caller holds it, lets go of it once none
// does, and builds an equal one again.
func TestBuildKeepsHeldSchemas(t *testing.T) {
	r, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Build("Observation")
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	if again, _ := r.Build("Observation"); again != res {
		t.Fatal("Build(Observation) while its Resource is held: a new Resource")
	}
	schema := res.Schema // holds the Arrow schema, not the Resource
	res = nil
	runtime.GC()
	if r.resources["Observation"].Value() != nil {
		t.Fatal("the Registry still holds Observation's Resource once no caller does")
	}
	again, err := r.Build("Observation")
	if err != nil {
		t.Fatal(err)
	}
	if again.Schema == schema || !again.Schema.Equal(schema) {
		t.Error("Observation built again: want an equal schema, newly built")
	}
	if m, ok := again.Root.Lookup([]byte("valueQuantity")); !ok || again.Fields[m.Child].Name != "value" {
		t.Errorf("Observation built again: valueQuantity looks up %+v, %v", m, ok)
	}
}
