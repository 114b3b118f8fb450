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
}

func (b *builder) resource(md protoreflect.MessageDescriptor) (*Resource, error) {
	typ := string(md.Name())
	children, err := b.elements(md, typ)
	if err != nil {
		return nil, err
	}
	children = append(children, &Node{
		Name:    PrimitiveExtensionsColumn,
		Path:    typ + "." + PrimitiveExtensionsColumn,
		Kind:    JSON,
		Derived: PrimitiveExtensions,
		Field:   arrow.Field{Name: PrimitiveExtensionsColumn, Type: arrow.BinaryTypes.String, Nullable: true},
	})
	root := &Node{Name: typ, Path: typ, Kind: Struct, FHIRType: typ, Children: children}
	if err := root.index(); err != nil {
		return nil, err
	}
	fields := make([]arrow.Field, len(children))
	for i, c := range children {
		fields[i] = c.Field
	}
	root.Field = arrow.Field{Name: typ, Type: arrow.StructOf(fields...), Nullable: true}
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
				primitive("reference", path+".reference", "string", false),
				derived(ReferenceTypeColumn, path, ReferenceType),
				derived(ReferenceIDColumn, path, ReferenceID))
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
		return jsonNode(name, path, "Resource", repeated, false), nil
	case sdURL(md) == sdPrefix+"Extension":
		return jsonNode(name, path, "Extension", repeated, false), nil
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
		return primitive(name, path, strings.TrimPrefix(typ, sdPrefix), repeated), nil
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
		return jsonNode(name, path, typ, repeated, true), nil
	}
	children, err := b.elements(md, path)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Path: path, Kind: Struct, Repeated: repeated, FHIRType: typ, Children: children}
	if err := n.index(); err != nil {
		return nil, err
	}
	n.Field = field(name, structOf(children), repeated)
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
		c, err := b.element(fd, fd.JSONName(), base+name+upperFirst(fd.JSONName()))
		if err != nil {
			return nil, err
		}
		if c.Repeated {
			return nil, fmt.Errorf("%s: choice type %s is repeated", c.Path, fd.FullName())
		}
		children = append(children, c)
	}
	n := &Node{Name: name, Path: path + "[x]", Kind: Choice, Repeated: repeated, Children: children}
	n.Field = field(name, structOf(children), repeated)
	return n, nil
}

// index fills the JSON key map of a Struct node.
func (n *Node) index() error {
	add := func(key string, m Member) error {
		if !n.keys.Put(key, m) {
			return fmt.Errorf("%s: JSON key %s is ambiguous", n.Path, key)
		}
		return nil
	}
	for i, c := range n.Children {
		switch {
		case c.Derived != NotDerived:
		case c.Kind == Choice:
			for j, cc := range c.Children {
				key := c.Name + upperFirst(cc.Name)
				if err := add(key, Member{Child: i, Choice: j}); err != nil {
					return err
				}
				if cc.Kind == Primitive {
					if err := add("_"+key, Member{Child: i, Choice: j, Under: true}); err != nil {
						return err
					}
				}
			}
		default:
			if err := add(c.Name, Member{Child: i, Choice: -1}); err != nil {
				return err
			}
			if c.Kind == Primitive {
				if err := add("_"+c.Name, Member{Child: i, Choice: -1, Under: true}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func primitive(name, path, fhirType string, repeated bool) *Node {
	sc, typ := scalarOf(fhirType)
	return &Node{Name: name, Path: path, Kind: Primitive, Repeated: repeated, FHIRType: fhirType, Scalar: sc,
		Field: field(name, typ, repeated)}
}

func derived(name, parent string, d Derived) *Node {
	return &Node{Name: name, Path: parent + "." + name, Kind: Primitive, Scalar: String, Derived: d,
		Field: field(name, arrow.BinaryTypes.String, false)}
}

func jsonNode(name, path, fhirType string, repeated, cut bool) *Node {
	return &Node{Name: name, Path: path, Kind: JSON, Repeated: repeated, FHIRType: fhirType, Cut: cut,
		Field: field(name, arrow.BinaryTypes.String, repeated)}
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

func field(name string, typ arrow.DataType, repeated bool) arrow.Field {
	if repeated {
		typ = arrow.ListOf(typ)
	}
	return arrow.Field{Name: name, Type: typ, Nullable: true}
}

func structOf(children []*Node) arrow.DataType {
	fs := make([]arrow.Field, len(children))
	for i, c := range children {
		fs[i] = c.Field
	}
	return arrow.StructOf(fs...)
}

func sdURL(md protoreflect.MessageDescriptor) string {
	return proto.GetExtension(md.Options(), apb.E_FhirStructureDefinitionUrl).(string)
}

func upperFirst(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
