package schema

import (
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
)

// Kind says how a Node is laid out in Arrow and read from FHIR JSON.
type Kind uint8

const (
	// Struct is a FHIR complex type or backbone element: an Arrow struct of its elements.
	Struct Kind = iota + 1
	// Choice is a choice element such as value[x]: an Arrow struct with one child per allowed type.
	// In FHIR JSON the element appears as valueQuantity, valueString ...; see Node.Lookup.
	Choice
	// Primitive is a FHIR primitive: an Arrow scalar (see Scalar).
	Primitive
	// JSON is an element kept as its JSON text: extension, modifierExtension, contained and inline resources,
	// and any element beyond the recursion limit. A repeated JSON node is a list with one JSON text per item.
	JSON
)

func (k Kind) String() string {
	switch k {
	case Struct:
		return "struct"
	case Choice:
		return "choice"
	case Primitive:
		return "primitive"
	case JSON:
		return "json"
	}
	return "unknown"
}

// Scalar is the Arrow representation of a Primitive node.
type Scalar uint8

const (
	String    Scalar = iota + 1 // utf8: string, code, uri, id, markdown, date, dateTime, time ...
	Bool                        // boolean
	Int                         // int64: integer, positiveInt, unsignedInt
	Float                       // float64: decimal
	Timestamp                   // timestamp[us, UTC]: instant
	Binary                      // binary: base64Binary, decoded
)

// Derived marks a column that is not a FHIR element but computed from the resource.
type Derived uint8

const (
	NotDerived Derived = iota
	// ReferenceType is Reference.referenceType: the resource type parsed from Reference.reference.
	ReferenceType
	// ReferenceID is Reference.referenceId: the logical id parsed from Reference.reference.
	ReferenceID
	// PrimitiveExtensions is the top-level _primitiveExtensions column (see PrimitiveExtensionsColumn).
	PrimitiveExtensions
)

// Names of the derived columns.
const (
	ReferenceTypeColumn       = "referenceType"
	ReferenceIDColumn         = "referenceId"
	PrimitiveExtensionsColumn = "_primitiveExtensions"
)

// Node is one column of a resource table, a FHIR element, with everything a converter needs to walk FHIR JSON.
// Nodes are immutable once built and safe for concurrent use.
type Node struct {
	// Name is the Arrow field name: the FHIR JSON element name (the proto json_name), or for a child of a
	// Choice node the type name as BigQuery's analytics schema spells it ("quantity", "string", "dateTime").
	Name string
	// FHIRType is the FHIR type of the element: "string", "code", "HumanName", "Reference", "BackboneElement",
	// "Extension", "Resource"; empty for Choice nodes and derived columns.
	FHIRType string
	// Children are the child nodes of a Struct or Choice node, in FHIR element order.
	Children []*Node
	// Type is the Arrow type of this node's column (a list when Repeated); Field is its field.
	Type arrow.DataType

	keys   *KeyTable[Member] // shared by the nodes of the same keys (see shared)
	parent *Node             // nil for a resource's root, for Path

	// The small fields last, together: a node takes 96 bytes, and all 146 types have about 120,000 (it took 192
	// with its arrow.Field, whose name repeats Name and whose metadata is always empty, and its path).
	Kind Kind
	// Repeated elements are Arrow lists of the element type.
	Repeated bool
	// Scalar is the Arrow representation of a Primitive node.
	Scalar Scalar
	// Derived is set on computed columns, which have no element in FHIR JSON.
	Derived Derived
	// Cut is set on a JSON node that stands for an element beyond the recursion limit.
	Cut bool
}

// Member says where a JSON object key of a Struct node goes.
type Member struct {
	Child  int  // index in Children
	Choice int  // for a Choice child: index in Children[Child].Children; else -1
	Under  bool // the key is the "_name" companion of a primitive element (its id and extensions)
}

// Keys returns the table Lookup reads, nil for a node that is not a Struct. It is immutable, and shared with the
// nodes of the same keys: a caller may copy it, to keep it next to its own data.
func (n *Node) Keys() *KeyTable[Member] { return n.keys }

// Lookup maps a key of a FHIR JSON object of this Struct node to its child. It does not allocate.
func (n *Node) Lookup(key []byte) (Member, bool) {
	if n.keys == nil {
		return Member{}, false
	}
	return n.keys.Get(key)
}

// Path is the FHIR element path of the node, for messages: "Patient.name.given", "Observation.value[x]",
// "Observation.valueQuantity". It is made from the node's ancestors on each call: errors need it, data never.
func (n *Node) Path() string {
	if n.parent == nil {
		return n.Name
	}
	p := n.parent.Path()
	switch {
	case n.parent.Kind == Choice:
		return strings.TrimSuffix(p, "[x]") + upperFirst(n.Name)
	case n.Kind == Choice:
		return p + "." + n.Name + "[x]"
	}
	return p + "." + n.Name
}

// Field is the Arrow field of this node: nullable, of its Type.
func (n *Node) Field() arrow.Field { return arrow.Field{Name: n.Name, Type: n.Type, Nullable: true} }

// Leaf is the Arrow type of one element of the node (the list item type when Repeated).
func (n *Node) Leaf() arrow.DataType {
	if n.Repeated {
		return n.Type.(*arrow.ListType).Elem()
	}
	return n.Type
}
