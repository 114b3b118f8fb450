// Package schema derives the Arrow schema of every FHIR R4 resource table from the google/fhir/go R4 protobuf
// descriptors. It sits between the descriptors and the transform and sinks stages: transform walks its Node
// trees to turn FHIR JSON into Arrow records, sinks write those records with the schema's metadata.
//
// The shape is deterministic and independent of the data, so the tables of different runs union cleanly:
//
//   - One table per resource type, without resourceType. Columns are the FHIR JSON element names and nest
//     like FHIR: complex types and backbone elements are structs, repeated elements are lists.
//   - A choice element value[x] is a struct "value" with one child per allowed type, named like BigQuery's
//     analytics schema: value.quantity, value.string, value.dateTime, value.codeableConcept ...
//   - A Reference keeps every R4 element (id, extension, reference, type, identifier, display) with
//     reference verbatim, plus the derived referenceType and referenceId columns for joins.
//   - Primitives: boolean -> bool; integer, positiveInt, unsignedInt -> int64 (no value any R4 parser accepts,
//     unsignedInt included, can overflow it); decimal -> float64; instant -> timestamp[us, UTC];
//     date, dateTime, time -> string verbatim; base64Binary -> binary; every other primitive -> string.
//   - Recursion: a message type nested inside itself (Identifier.assigner.identifier,
//     Reference.identifier.assigner, QuestionnaireResponse.item.item, CodeSystem.concept.concept) appears at
//     most Options.RecursionDepth times on any path (default 2, like BigQuery's recursiveStructureDepth).
//     Nesting that is not recursive is never cut.
//   - Nothing is dropped: extension and modifierExtension (at every level), contained, inline resources
//     (Bundle.entry.resource, Parameters.parameter.resource) and whatever lies beyond the recursion limit are
//     kept as JSON text in their place (a list of JSON texts when repeated).
//   - The ids and extensions of primitive elements (FHIR JSON "_birthDate", "_given") are kept in one
//     top-level column "_primitiveExtensions": a JSON object keyed by the element path in FHIR JSON spelling
//     ("birthDate", "name[0].given[1]", "component[2].valueString"), one entry per primitive value, whose
//     values are the original "_x" JSON values (one array item each for repeated elements). It is null when
//     the resource has none.
//   - Every field is nullable. Schema metadata: fhirlake.schema_version, fhir.version, fhir.resource_type,
//     fhirlake.recursion_depth.
package schema

import (
	"fmt"
	"slices"
	"sync"
	"weak"

	"github.com/apache/arrow/go/v17/arrow"
	cpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Version is the version of the table shapes; bump it on any change of shape.
const Version = "1"

// FHIRVersion is the FHIR release the schemas follow.
const FHIRVersion = "4.0.1"

// DefaultRecursionDepth is the recursion depth used when Options.RecursionDepth is 0.
const DefaultRecursionDepth = 2

// Metadata keys of every resource schema.
const (
	MetaSchemaVersion = "fhirlake.schema_version"
	MetaFHIRVersion   = "fhir.version"
	MetaResourceType  = "fhir.resource_type"
	// MetaRecursionDepth records Options.RecursionDepth (as resolved): tables built with different depths have
	// different shapes under the same schema version.
	MetaRecursionDepth = "fhirlake.recursion_depth"
)

// Options tune the schemas. The zero value gives the default shape.
type Options struct {
	// RecursionDepth is how many times a message type may appear on one path; deeper elements are kept as
	// JSON text. 0 means DefaultRecursionDepth.
	RecursionDepth int
}

// Registry holds the schema of every R4 resource type. It is safe for concurrent use.
//
// A type's schema is built on its first use (Build, Resource) and kept for as long as a caller holds its Resource:
// all 146 types take about 18 MB of heap (their nodes share Arrow types and key maps) and 0.1 s to build, and a run
// that meets them all, one object after the other as a bulk export writes them, need not keep them all. A type
// built again gets an equal schema (arrow.Schema.Equal), not the same pointer: building is deterministic, and the
// tests build every type at several recursion depths.
type Registry struct {
	types []string
	mds   map[string]protoreflect.MessageDescriptor
	depth int

	mu        sync.Mutex
	resources map[string]weak.Pointer[Resource] // the schemas built, while someone holds them
	shared    *shared                           // guarded by mu
}

// Resource is the table of one resource type.
type Resource struct {
	Type   string
	Schema *arrow.Schema
	// Fields align with Schema.Fields().
	Fields []*Node
	// Root is a Struct node for the resource itself whose Children are Fields; its Lookup maps the keys of the
	// resource's JSON object ("resourceType" is not among them).
	Root *Node
}

// New prepares the schemas of all R4 resource types from the google/fhir/go descriptors.
func New(opts Options) (*Registry, error) {
	depth := opts.RecursionDepth
	if depth == 0 {
		depth = DefaultRecursionDepth
	}
	if depth < 0 {
		return nil, fmt.Errorf("build schemas: recursion depth %d is negative", depth)
	}
	cr := (&cpb.ContainedResource{}).ProtoReflect().Descriptor()
	if cr.Oneofs().Len() != 1 {
		return nil, fmt.Errorf("build schemas: ContainedResource has %d oneofs, want 1", cr.Oneofs().Len())
	}
	oneof := cr.Oneofs().Get(0)
	r := &Registry{mds: make(map[string]protoreflect.MessageDescriptor, oneof.Fields().Len()), depth: depth,
		resources: map[string]weak.Pointer[Resource]{}, shared: newShared()}
	for i := 0; i < oneof.Fields().Len(); i++ {
		md := oneof.Fields().Get(i).Message()
		if md == nil {
			return nil, fmt.Errorf("build schemas: ContainedResource field %s is not a message", oneof.Fields().Get(i).Name())
		}
		typ := string(md.Name())
		r.mds[typ] = md
		r.types = append(r.types, typ)
	}
	slices.Sort(r.types)
	return r, nil
}

// Types returns every R4 resource type name, sorted.
func (r *Registry) Types() []string { return slices.Clone(r.types) }

// RecursionDepth returns the recursion depth the schemas were built with.
func (r *Registry) RecursionDepth() int { return r.depth }

// Resource returns the table of a resource type; ok is false for a name that is not an R4 resource type, or whose
// schema cannot be built (Build says why).
func (r *Registry) Resource(resourceType string) (*Resource, bool) {
	res, err := r.Build(resourceType)
	return res, err == nil
}

// Build returns the table of a resource type, building its schema unless a Resource built before is still held.
func (r *Registry) Build(resourceType string) (*Resource, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res := r.resources[resourceType].Value(); res != nil {
		return res, nil
	}
	md, ok := r.mds[resourceType]
	if !ok {
		return nil, fmt.Errorf("build schema: %q is not an R4 resource type", resourceType)
	}
	res, err := (&builder{depth: r.depth, shared: r.shared}).resource(md)
	if err != nil {
		return nil, fmt.Errorf("build schema: %w", err)
	}
	r.resources[resourceType] = weak.Make(res)
	return res, nil
}
