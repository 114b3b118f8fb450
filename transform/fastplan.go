package transform

import (
	"fmt"
	"strings"
	"sync"

	apb "github.com/google/fhir/go/proto/google/fhir/proto/annotations_go_proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	rpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	d3pb "github.com/google/fhir/go/proto/google/fhir/proto/stu3/datatypes_go_proto"

	"github.com/fhirlake/fhirlake/schema"
)

// This file compiles the decoding plan of the fast validator (fastvalidate.go) from the google/fhir/go R4
// descriptors, the same ones the reference path (jsonformat) reads: per message type, the JSON keys it accepts
// (jsonpbhelper.FieldMap), its required fields (validation_requirement), and per field the primitive kind with
// its lexical rules, the allowed codes of a required binding (the enum of a specialised code type), the allowed
// reference target types (valid_reference_type) and the choice options.
//
// The plan only describes what the reference accepts in the common shapes of FHIR JSON. Keys it leaves out (a
// Reference's typed-id fields, "_reference", a primitive's "value" field, anything upper-case) send the line to
// the reference path, which then decides.

// pkind is how the reference parses a primitive's JSON value (jsonformat.parsePrimitiveType, keyed by the
// message name).
type pkind uint8

const (
	pkMessage pkind = iota // not a primitive: a JSON object
	pkBase64
	pkBool
	pkCode // google.fhir.r4.core.Code: any JSON string
	pkDate
	pkDateTime
	pkDecimal
	pkID
	pkInstant
	pkInteger
	pkOID
	pkPositiveInt
	pkString
	pkTime
	pkUnsignedInt
	pkURI  // Uri, Url, Canonical
	pkText // Markdown, Xhtml
	pkUUID
	pkEnum        // a specialised code type with a value set: one of its codes
	pkUnsupported // anything else: the line goes to the reference path
)

// vkind is the check fhirvalidate applies to a primitive after parsing (validatePrimitives, keyed by the full
// message name). It only runs outside contained resources: the reference does not walk into google.protobuf.Any.
type vkind uint8

const (
	vkNone vkind = iota
	vkString
	vkPositiveInt
	vkUnsignedInt
	vkID
	vkOID
	vkUUID
	vkCode
	vkURL
)

// mkind marks messages the reference handles specially.
type mkind uint8

const (
	mkNormal    mkind = iota
	mkReference       // google.fhir.r4.core.Reference: "reference" is normalised and its target type checked
	mkResource        // ContainedResource (Bundle.entry.resource) or google.protobuf.Any under "contained"
)

// fmsg is the plan of one message type.
type fmsg struct {
	name     protoreflect.FullName
	kind     mkind
	keys     schema.KeyTable[fkey]
	fields   []ffield
	required []int
	// contained is true for an Any under "contained": the resource inside is parsed but not validated.
	contained bool
	// valueRequired is set on a primitive whose value is a required field (Xhtml): an empty value is missing.
	valueRequired bool
	// pathName is a resource type's segment in the reference's element paths below a nested resource
	// ("Bundle.entry[0].resource.observation"): the JSON name of its ContainedResource field.
	pathName string
}

// fkey says where a JSON key of a message goes.
type fkey struct {
	field int
	opt   int  // choice option, -1 for a field that is not a choice
	under bool // the "_name" companion of a primitive (its id and extensions)
	ref   bool // Reference.reference
}

type ffield struct {
	name     string
	repeated bool
	choice   []fopt // the options of a choice field
	fopt            // the element type of any other field
}

// fopt is the type of one element: a message, or a primitive with its parse and validation rules.
type fopt struct {
	msg *fmsg // the message plan; for a primitive, the plan of its "_name" object (id, extension)
	// name is a choice option's segment in the reference's element paths ("Observation.value.quantity"): the
	// JSON name of its field in the choice message. Empty for any other element.
	name string
	pk   pkind
	vk   vkind
	enum *fenum
	// refTypes are the allowed target types of a Reference element (valid_reference_type), empty for any.
	refTypes []string
}

// fenum holds the codes of a specialised code type as UnmarshalCode matches them: the enum value names (upper
// case, "_" for "-"), and the original codes of values whose name differs.
type fenum struct {
	names, orig schema.KeyTable[struct{}]
}

// fastPlan is the decoding plan of every R4 resource type. It is immutable and safe for concurrent use.
type fastPlan struct {
	resources schema.KeyTable[*fmsg] // by resource type, looked up for every line
	// refFields maps a resource type named in "Type/id" references to whether the R4 Reference has a typed field
	// for it; types only STU3 knows are absent from R4 Reference, and the reference rejects them. It is looked up
	// for every reference, hence a KeyTable.
	refFields schema.KeyTable[bool]
}

// loadFastPlan compiles the plan once per process: it depends only on the descriptors compiled into the binary.
var loadFastPlan = sync.OnceValues(newFastPlan)

func newFastPlan() (*fastPlan, error) {
	b := &planBuilder{msgs: map[protoreflect.FullName]*fmsg{}, enums: map[protoreflect.FullName]*fenum{}}
	fp := &fastPlan{}
	cr := (&rpb.ContainedResource{}).ProtoReflect().Descriptor()
	oneofs := cr.Oneofs()
	if oneofs.Len() != 1 {
		return nil, fmt.Errorf("compile decoding plan: ContainedResource has %d oneofs, want 1", oneofs.Len())
	}
	fields := oneofs.Get(0).Fields()
	for i := 0; i < fields.Len(); i++ {
		md := fields.Get(i).Message()
		if md == nil {
			continue
		}
		m, err := b.message(md)
		if err != nil {
			return nil, fmt.Errorf("compile decoding plan: %w", err)
		}
		m.pathName = fields.Get(i).JSONName()
		fp.resources.Put(string(md.Name()), m)
	}
	refFields := map[string]bool{}
	for _, ref := range []proto.Message{&d3pb.Reference{}, &d4pb.Reference{}} {
		r4 := ref.ProtoReflect().Descriptor().FullName() == (&d4pb.Reference{}).ProtoReflect().Descriptor().FullName()
		opts := ref.ProtoReflect().Descriptor().Oneofs().ByName("reference").Fields()
		for i := 0; i < opts.Len(); i++ {
			typ := proto.GetExtension(opts.Get(i).Options(), apb.E_ReferencedFhirType).(string)
			if typ == "" {
				continue
			}
			refFields[typ] = refFields[typ] || r4
		}
	}
	for typ, r4 := range refFields {
		fp.refFields.Put(typ, r4)
	}
	return fp, nil
}

type planBuilder struct {
	msgs  map[protoreflect.FullName]*fmsg
	enums map[protoreflect.FullName]*fenum
}

const (
	anyName               = "google.protobuf.Any"
	containedResourceName = "google.fhir.r4.core.ContainedResource"
	referenceName         = "google.fhir.r4.core.Reference"
)

// message returns the plan of md, building it on first use (message types are recursive).
func (b *planBuilder) message(md protoreflect.MessageDescriptor) (*fmsg, error) {
	if m, ok := b.msgs[md.FullName()]; ok {
		return m, nil
	}
	m := &fmsg{name: md.FullName()}
	b.msgs[md.FullName()] = m
	switch md.FullName() {
	case containedResourceName:
		m.kind = mkResource
		return m, nil
	case anyName:
		m.kind, m.contained = mkResource, true
		return m, nil
	case referenceName:
		m.kind = mkReference
	}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil {
			// A primitive's value, or a field the reference would reject as "invalid field".
			if proto.GetExtension(fd.Options(), apb.E_ValidationRequirement).(apb.Requirement) == apb.Requirement_REQUIRED_BY_FHIR {
				m.valueRequired = true
			}
			continue
		}
		if m.kind == mkReference {
			if oo := fd.ContainingOneof(); oo != nil && oo.Name() == "reference" && fd.Name() != "uri" {
				continue // typed ids ("patientId") and "fragment" are not FHIR JSON: the reference decides
			}
		}
		idx := len(m.fields)
		f := ffield{name: fd.JSONName(), repeated: fd.IsList()}
		if proto.GetExtension(fd.Options(), apb.E_ValidationRequirement).(apb.Requirement) == apb.Requirement_REQUIRED_BY_FHIR {
			m.required = append(m.required, idx)
		}
		if proto.HasExtension(fd.Message().Options(), apb.E_IsChoiceType) {
			opts := fd.Message().Fields()
			for j := 0; j < opts.Len(); j++ {
				od := opts.Get(j)
				o, err := b.element(od)
				if err != nil {
					return nil, err
				}
				o.name = od.JSONName()
				f.choice = append(f.choice, o)
				key := fd.JSONName() + upperFirstASCII(od.JSONName())
				m.keys.Put(key, fkey{field: idx, opt: j})
				if o.pk != pkMessage {
					m.keys.Put("_"+key, fkey{field: idx, opt: j, under: true})
				}
			}
		} else {
			if fd.Message().FullName() == anyName && fd.JSONName() != "contained" {
				continue // the reference only reads an Any under "contained"
			}
			o, err := b.element(fd)
			if err != nil {
				return nil, err
			}
			f.fopt = o
			isRef := m.kind == mkReference && fd.Name() == "uri"
			m.keys.Put(fd.JSONName(), fkey{field: idx, opt: -1, ref: isRef})
			if o.pk != pkMessage && !isRef {
				m.keys.Put("_"+fd.JSONName(), fkey{field: idx, opt: -1, under: true})
			}
		}
		m.fields = append(m.fields, f)
	}
	return m, nil
}

// element returns the type of the elements of field fd.
func (b *planBuilder) element(fd protoreflect.FieldDescriptor) (fopt, error) {
	md := fd.Message()
	msg, err := b.message(md)
	if err != nil {
		return fopt{}, err
	}
	o := fopt{msg: msg}
	if md.FullName() == referenceName {
		o.refTypes = proto.GetExtension(fd.Options(), apb.E_ValidReferenceType).([]string)
	}
	if proto.GetExtension(md.Options(), apb.E_StructureDefinitionKind).(apb.StructureDefinitionKindValue) != apb.StructureDefinitionKindValue_KIND_PRIMITIVE_TYPE {
		return o, nil
	}
	o.pk = parseKind(md)
	if o.pk == pkEnum {
		o.enum = b.enum(md)
		if o.enum == nil {
			o.pk = pkCode // a value set bound to a string-valued code: any string parses
		}
	}
	o.vk = validateKind(md.FullName())
	if msg.valueRequired && o.pk != pkText {
		o.pk = pkUnsupported // only Xhtml's value is required in R4; anything else goes to the reference path
	}
	return o, nil
}

func parseKind(md protoreflect.MessageDescriptor) pkind {
	switch md.Name() {
	case "Base64Binary":
		return pkBase64
	case "Boolean":
		return pkBool
	case "Code":
		return pkCode
	case "Date":
		return pkDate
	case "DateTime":
		return pkDateTime
	case "Decimal":
		return pkDecimal
	case "Id":
		return pkID
	case "Instant":
		return pkInstant
	case "Integer":
		return pkInteger
	case "Oid":
		return pkOID
	case "PositiveInt":
		return pkPositiveInt
	case "String":
		return pkString
	case "Time":
		return pkTime
	case "UnsignedInt":
		return pkUnsignedInt
	case "Url", "Uri", "Canonical":
		return pkURI
	case "Markdown", "Xhtml":
		return pkText
	case "Uuid":
		return pkUUID
	case "ReferenceId":
		return pkUnsupported
	}
	if proto.HasExtension(md.Options(), apb.E_FhirValuesetUrl) {
		return pkEnum
	}
	return pkUnsupported
}

func validateKind(name protoreflect.FullName) vkind {
	switch name {
	case "google.fhir.r4.core.String":
		return vkString
	case "google.fhir.r4.core.PositiveInt":
		return vkPositiveInt
	case "google.fhir.r4.core.UnsignedInt":
		return vkUnsignedInt
	case "google.fhir.r4.core.Id":
		return vkID
	case "google.fhir.r4.core.Oid":
		return vkOID
	case "google.fhir.r4.core.Uuid":
		return vkUUID
	case "google.fhir.r4.core.Code":
		return vkCode
	case "google.fhir.r4.core.Uri", "google.fhir.r4.core.Url", "google.fhir.r4.core.Canonical":
		return vkURL
	}
	return vkNone
}

// enum returns the codes of a specialised code type, nil when its value is not an enum.
func (b *planBuilder) enum(md protoreflect.MessageDescriptor) *fenum {
	vf := md.Fields().ByName("value")
	if vf == nil || vf.Kind() != protoreflect.EnumKind {
		return nil
	}
	ed := vf.Enum()
	if e, ok := b.enums[ed.FullName()]; ok {
		return e
	}
	e := &fenum{}
	vals := ed.Values()
	for i := 0; i < vals.Len(); i++ {
		v := vals.Get(i)
		if v.Number() != 0 {
			e.names.Put(string(v.Name()), struct{}{})
		}
		if orig := proto.GetExtension(v.Options(), apb.E_FhirOriginalCode).(string); orig != "" {
			e.orig.Put(orig, struct{}{})
		}
	}
	b.enums[ed.FullName()] = e
	return e
}

func upperFirstASCII(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
