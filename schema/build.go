package schema

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
	apb "github.com/google/fhir/go/proto/google/fhir/proto/annotations_go_proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	anyMessage       = "google.protobuf.Any"
	containedMessage = "google.fhir.r4.core.ContainedResource"
	sdPrefix         = "http://hl7.org/fhir/StructureDefinition/"
)

// builder walks the descriptors of one registry. stack holds the message types on the current path, from the
// resource down, for the recursion limit.
type builder struct {
	depth int
	stack []protoreflect.FullName
	*shared
}

// shared holds what the schemas of a Registry have in common, so that each is kept once. With the recursion
// limit, one element type appears at many places of a table (a Reference inside an Identifier inside a Reference
// ...), and all 146 tables have some 120,000 nodes; yet they have 593 distinct key maps, and about 700 distinct
// struct types and 400 list types. A node keeps its own name and path and points to the shared ones. Nodes and
// Arrow types are immutable once built, so sharing them is safe.
type shared struct {
	ids     map[arrow.DataType]int // an id for each Arrow type used as a field's type, given on first use (id)
	lists   map[int]*arrow.ListType
	structs map[string]*arrow.StructType // by their fields' names, nullability and type ids
	keys    map[string]*KeyTable[Member] // by their keys and members, in order
	sig     []byte
}

func newShared() *shared {
	return &shared{ids: map[arrow.DataType]int{}, lists: map[int]*arrow.ListType{},
		structs: map[string]*arrow.StructType{}, keys: map[string]*KeyTable[Member]{}}
}

// id returns the number of t, giving t one if it has none: two types with the same id are the same type.
func (s *shared) id(t arrow.DataType) int {
	if n, ok := s.ids[t]; ok {
		return n
	}
	n := len(s.ids) + 1
	s.ids[t] = n
	return n
}

// listOf returns the list type of elem.
func (s *shared) listOf(elem arrow.DataType) *arrow.ListType {
	k := s.id(elem)
	if t, ok := s.lists[k]; ok {
		return t
	}
	t := arrow.ListOf(elem)
	s.lists[k] = t
	return t
}

// structOf returns the struct type of fields.
func (s *shared) structOf(fields []arrow.Field) *arrow.StructType {
	sig := s.sig[:0]
	for _, f := range fields {
		if len(f.Metadata.Keys()) > 0 {
			return arrow.StructOf(fields...) // not made here: none has metadata
		}
		sig = strconv.AppendInt(sig, int64(s.id(f.Type)), 10)
		if f.Nullable {
			sig = append(sig, '?')
		}
		sig = append(sig, ':')
		sig = append(sig, f.Name...)
		sig = append(sig, 0)
	}
	s.sig = sig
	if t, ok := s.structs[string(sig)]; ok {
		return t
	}
	t := arrow.StructOf(fields...)
	s.structs[string(sig)] = t
	return t
}

// typeOf returns the Arrow type of an element of type typ: a list of it when repeated.
func (s *shared) typeOf(typ arrow.DataType, repeated bool) arrow.DataType {
	if repeated {
		return s.listOf(typ)
	}
	return typ
}

func (b *builder) resource(md protoreflect.MessageDescriptor) (*Resource, error) {
	typ := string(md.Name())
	children, err := b.elements(md, typ)
	if err != nil {
		return nil, err
	}
	children = append(children, &Node{
		Name:    PrimitiveExtensionsColumn,
		Kind:    JSON,
		Derived: PrimitiveExtensions,
		Type:    arrow.BinaryTypes.String,
	})
	root := &Node{Name: typ, Kind: Struct, FHIRType: typ, Children: children}
	adopt(root)
	if err := b.index(root); err != nil {
		return nil, err
	}
	fields := fieldsOf(children)
	root.Type = arrow.StructOf(fields...)
	meta := arrow.NewMetadata(
		[]string{MetaSchemaVersion, MetaFHIRVersion, MetaResourceType, MetaRecursionDepth},
		[]string{Version, FHIRVersion, typ, strconv.Itoa(b.depth)},
	)
	return &Resource{Type: typ, Schema: arrow.NewSchema(fields, &meta), Fields: children, Root: root}, nil
}

// elements returns the child nodes of a complex type, backbone element or resource, in FHIR order.
func (b *builder) elements(md protoreflect.MessageDescriptor, path string) ([]*Node, error) {
	b.stack = append(b.stack, md.FullName())
	defer func() { b.stack = b.stack[:len(b.stack)-1] }()
	isRef := sdURL(md) == sdPrefix+"Reference"
	var out []*Node
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if oo := fd.ContainingOneof(); oo != nil && !oo.IsSynthetic() {
			if !isRef || oo.Name() != "reference" {
				return nil, fmt.Errorf("%s: unexpected oneof %s in %s", path, oo.Name(), md.FullName())
			}
			if oo.Fields().Get(0) != fd {
				continue // the reference oneof becomes one verbatim string, emitted at its first field
			}
			out = append(out,
				b.primitive("reference", path+".reference", "string", false),
				b.derived(ReferenceTypeColumn, path, ReferenceType),
				b.derived(ReferenceIDColumn, path, ReferenceID))
			continue
		}
		n, err := b.element(fd, fd.JSONName(), path+"."+fd.JSONName())
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if isRef {
		// FHIR order: reference (and what we derive from it) comes before type.
		for i, n := range out {
			if n.Name == "type" && i+3 < len(out) && out[i+1].Name == "reference" {
				copy(out[i:], out[i+1:i+4])
				out[i+3] = n
				break
			}
		}
	}
	return out, nil
}

// element builds the node of one field named name at path.
func (b *builder) element(fd protoreflect.FieldDescriptor, name, path string) (*Node, error) {
	md := fd.Message()
	if md == nil {
		return nil, fmt.Errorf("%s: field %s is a %s, not a FHIR element", path, fd.FullName(), fd.Kind())
	}
	repeated := fd.IsList()
	fn := md.FullName()
	switch {
	case fn == anyMessage || fn == containedMessage:
		return b.jsonNode(name, path, "Resource", repeated, false), nil
	case sdURL(md) == sdPrefix+"Extension":
		return b.jsonNode(name, path, "Extension", repeated, false), nil
	}
	mo := md.Options()
	if proto.GetExtension(mo, apb.E_StructureDefinitionKind).(apb.StructureDefinitionKindValue) == apb.StructureDefinitionKindValue_KIND_PRIMITIVE_TYPE {
		typ := sdURL(md)
		if typ == "" {
			if bases := proto.GetExtension(mo, apb.E_FhirProfileBase).([]string); len(bases) > 0 {
				typ = bases[0]
			}
		}
		if !strings.HasPrefix(typ, sdPrefix) {
			return nil, fmt.Errorf("%s: primitive %s has no FHIR type", path, fn)
		}
		return b.primitive(name, path, strings.TrimPrefix(typ, sdPrefix), repeated), nil
	}
	if proto.GetExtension(mo, apb.E_IsChoiceType).(bool) {
		return b.choice(md, name, path, repeated)
	}
	count := 0
	for _, s := range b.stack {
		if s == fn {
			count++
		}
	}
	typ := "BackboneElement"
	if u := sdURL(md); strings.HasPrefix(u, sdPrefix) {
		typ = strings.TrimPrefix(u, sdPrefix)
	}
	if count >= b.depth {
		return b.jsonNode(name, path, typ, repeated, true), nil
	}
	children, err := b.elements(md, path)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Kind: Struct, Repeated: repeated, FHIRType: typ, Children: children}
	adopt(n)
	if err := b.index(n); err != nil {
		return nil, err
	}
	n.Type = b.typeOf(b.structOf(fieldsOf(children)), repeated)
	return n, nil
}

// choice builds a value[x] node: a struct with one child per allowed type.
func (b *builder) choice(md protoreflect.MessageDescriptor, name, path string, repeated bool) (*Node, error) {
	if md.Oneofs().Len() != 1 || md.Oneofs().Get(0).Fields().Len() != md.Fields().Len() {
		return nil, fmt.Errorf("%s: choice type %s is not one oneof", path, md.FullName())
	}
	base := strings.TrimSuffix(path, name)
	var children []*Node
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		cpath := base + name + upperFirst(fd.JSONName())
		c, err := b.element(fd, fd.JSONName(), cpath)
		if err != nil {
			return nil, err
		}
		if c.Repeated {
			return nil, fmt.Errorf("%s: choice type %s is repeated", cpath, fd.FullName())
		}
		children = append(children, c)
	}
	n := &Node{Name: name, Kind: Choice, Repeated: repeated, Children: children}
	adopt(n)
	n.Type = b.typeOf(b.structOf(fieldsOf(children)), repeated)
	return n, nil
}

// index gives a Struct node its JSON key map: the shared one of the same keys and members, or a new one.
func (b *builder) index(n *Node) error {
	type entry struct {
		key string
		m   Member
	}
	var entries []entry
	for i, c := range n.Children {
		switch {
		case c.Derived != NotDerived:
		case c.Kind == Choice:
			for j, cc := range c.Children {
				key := c.Name + upperFirst(cc.Name)
				entries = append(entries, entry{key, Member{Child: i, Choice: j}})
				if cc.Kind == Primitive {
					entries = append(entries, entry{"_" + key, Member{Child: i, Choice: j, Under: true}})
				}
			}
		default:
			entries = append(entries, entry{c.Name, Member{Child: i, Choice: -1}})
			if c.Kind == Primitive {
				entries = append(entries, entry{"_" + c.Name, Member{Child: i, Choice: -1, Under: true}})
			}
		}
	}
	sig := b.sig[:0]
	for _, e := range entries {
		sig = append(sig, e.key...)
		sig = append(sig, 0)
		sig = strconv.AppendInt(sig, int64(e.m.Child), 10)
		sig = append(sig, ',')
		sig = strconv.AppendInt(sig, int64(e.m.Choice), 10)
		sig = strconv.AppendBool(sig, e.m.Under)
		sig = append(sig, 0)
	}
	b.sig = sig
	if t, ok := b.keys[string(sig)]; ok {
		n.keys = t
		return nil
	}
	t := new(KeyTable[Member])
	for _, e := range entries {
		if !t.Put(e.key, e.m) {
			return fmt.Errorf("%s: JSON key %s is ambiguous", n.Path(), e.key)
		}
	}
	b.keys[string(sig)] = t
	n.keys = t
	return nil
}

func (b *builder) primitive(name, path, fhirType string, repeated bool) *Node {
	sc, typ := scalarOf(fhirType)
	return &Node{Name: name, Kind: Primitive, Repeated: repeated, FHIRType: fhirType, Scalar: sc,
		Type: b.typeOf(typ, repeated)}
}

func (b *builder) derived(name, parent string, d Derived) *Node {
	return &Node{Name: name, Kind: Primitive, Scalar: String, Derived: d,
		Type: arrow.BinaryTypes.String}
}

func (b *builder) jsonNode(name, path, fhirType string, repeated, cut bool) *Node {
	return &Node{Name: name, Kind: JSON, Repeated: repeated, FHIRType: fhirType, Cut: cut,
		Type: b.typeOf(arrow.BinaryTypes.String, repeated)}
}

// TimestampType is the Arrow type of instant columns.
var TimestampType = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}

func scalarOf(fhirType string) (Scalar, arrow.DataType) {
	switch fhirType {
	case "boolean":
		return Bool, arrow.FixedWidthTypes.Boolean
	case "integer", "positiveInt", "unsignedInt":
		return Int, arrow.PrimitiveTypes.Int64
	case "decimal":
		return Float, arrow.PrimitiveTypes.Float64
	case "instant":
		return Timestamp, TimestampType
	case "base64Binary":
		return Binary, arrow.BinaryTypes.Binary
	}
	return String, arrow.BinaryTypes.String
}

// fieldsOf returns the Arrow fields of nodes.
func fieldsOf(nodes []*Node) []arrow.Field {
	fs := make([]arrow.Field, len(nodes))
	for i, c := range nodes {
		fs[i] = c.Field()
	}
	return fs
}

func sdURL(md protoreflect.MessageDescriptor) string {
	return proto.GetExtension(md.Options(), apb.E_FhirStructureDefinitionUrl).(string)
}

// adopt makes n the parent of its children, for Node.Path.
func adopt(n *Node) {
	for _, c := range n.Children {
		c.parent = n
	}
}

func upperFirst(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
