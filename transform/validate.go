package transform

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
	"github.com/google/fhir/go/jsonformat/errorreporter"
	"google.golang.org/protobuf/proto"

	rpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
)

// Issue is one problem found in a line. Path is the FHIR element path as google/fhir/go writes it
// ("Patient.birthDate", "Observation.component[0].code", "Bundle.entry[0].resource.Patient.id" inside a nested
// resource); "resourceType" for the line's type itself and "" when the line is not a JSON object at all. An unknown
// element is reported at its parent's path, since its name is content. Code is an OperationOutcome issue-type code
// (see Validate). Detail is human text that never holds a value from the resource.
type Issue struct{ Path, Code, Detail string }

// OperationOutcome issue-type codes used in Issue.Code.
const (
	codeStructure    = "structure"     // not JSON, not an object, wrong JSON type, unknown element
	codeInvalid      = "invalid"       // anything else the library rejects (e.g. wrong reference target type)
	codeRequired     = "required"      // a required element is missing
	codeValue        = "value"         // a primitive's lexical form or range is wrong
	codeCodeInvalid  = "code-invalid"  // a code outside its required value set
	codeNotSupported = "not-supported" // resourceType is not an R4 resource type
	codeTooLong      = "too-long"      // nesting too deep, string over 1 MB
	codeException    = "exception"     // the library failed in an unexpected way (internal error or panic)
	codeInfo         = "informational" // further issues were left out
)

const (
	// maxNestingDepth bounds the nesting of objects and arrays in a line. The library recurses per level, so a
	// deeper line is rejected by a byte scan before it reaches the library. The deepest HL7 R4 example nests 21
	// levels, the deepest Synthea resource 8.
	maxNestingDepth = 1000
	// maxIssues bounds the issues kept for one line; the rest are counted in one last informational issue.
	maxIssues = 100
)

// Verdict is the outcome of validating one line. The line is valid when Issues is empty.
type Verdict struct {
	// ResourceType is the line's top-level resourceType when the line is a well-formed JSON object whose
	// resourceType is a JSON string, else "".
	ResourceType string
	// Known says whether ResourceType is an R4 resource type.
	Known bool
	// ID is the top-level id when it is a JSON string, else "".
	ID string
	// Version is meta.versionId when it is a JSON string, else meta.lastUpdated when it is one, else "": with
	// ResourceType and ID it identifies one version of a resource (pipeline deduplicates on it).
	Version string
	Issues  []Issue
}

// Validator validates FHIR R4 JSON resources with google/fhir/go jsonformat, with its extended validation
// (required elements, primitive formats, reference types). It is not safe for concurrent use: make one per
// goroutine.
type Validator struct {
	known map[string]bool
	dups  dupKeys
	// unmarshal is the library call; tests replace it to exercise the panic guard.
	unmarshal func(line []byte, er errorreporter.ErrorReporter) (proto.Message, error)
}

// NewValidator returns a Validator backed by a jsonformat R4 Unmarshaller that validates, in UTC.
func NewValidator() (*Validator, error) {
	um, err := jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
	if err != nil {
		return nil, fmt.Errorf("create R4 unmarshaller: %w", err)
	}
	um.MaxNestingDepth = maxNestingDepth
	return &Validator{known: r4ResourceTypes(), unmarshal: um.UnmarshalWithErrorReporter}, nil
}

// r4ResourceTypes lists the resource types the library parses: the message names of the ContainedResource oneof.
func r4ResourceTypes() map[string]bool {
	known := make(map[string]bool)
	oneofs := (&rpb.ContainedResource{}).ProtoReflect().Descriptor().Oneofs()
	for i := 0; i < oneofs.Len(); i++ {
		fields := oneofs.Get(i).Fields()
		for j := 0; j < fields.Len(); j++ {
			if m := fields.Get(j).Message(); m != nil {
				known[string(m.Name())] = true
			}
		}
	}
	return known
}

// Validate checks one line (one JSON resource, no line terminator) and never panics.
//
// Before the library sees the line, Validate rejects, with code structure: a line that is not valid UTF-8, holds
// a NUL byte, is not well-formed JSON, is not a JSON object, or has an object with two members of the same name
// (the library would keep the last, other readers the first; a duplicate resourceType leaves the line without a
// type); a missing or non-string resourceType. A
// resourceType that is not an R4 type gets not-supported, and nesting deeper than 1000 levels gets too-long (the
// library would recurse once per level). An object key starting with an upper-case letter ("BirthDate"), which the
// library accepts as "birthDate", gets structure too, since the converter reads the original JSON and would lose
// it. The library's own errors are then mapped by their class, never by their diagnostics (which quote values):
//
//	invalid JSON in an element, expected array, unknown field,    -> structure
//	  invalid (extension) field, multiple choice values,
//	  array length mismatch, missing or non-string contained resourceType
//	unknown resource type (contained)                              -> not-supported
//	missing required field "x"                                     -> required, at <path>.x
//	expected <primitive>, invalid time, integer out of range,      -> value
//	  invalid Id/Oid/Uuid/Code format, invalid uri, invalid reference,
//	  string contains invalid characters
//	code type mismatch                                             -> code-invalid (names the value set's type)
//	string exceeds 1 MB, maximum nesting depth                     -> too-long
//	invalid reference to a X resource, want Y                      -> invalid
//	any other library error                                        -> invalid (known class) or exception
//
// Issues are sorted by path, deduplicated and capped at 100 (plus one informational issue saying how many more).
func (v *Validator) Validate(line []byte) (vd Verdict) {
	defer func() {
		if r := recover(); r != nil {
			// Never reached through the library (see run), kept so that no input can take a worker down.
			vd.Issues = append(vd.Issues, Issue{Path: vd.ResourceType, Code: codeException, Detail: "validator failed unexpectedly"})
		}
	}()
	sh := scanShape(line, maxNestingDepth)
	if issue, ok := precheck(line, sh); !ok {
		if issue.Code == codeTooLong && json.Valid(line) {
			vd.ResourceType, vd.Known, vd.ID = v.header(line)
			if vd.Known {
				issue.Path = vd.ResourceType
			}
		}
		vd.Issues = []Issue{issue}
		return vd
	}
	if dup, onType := v.dups.find(line); dup {
		issue := Issue{Code: codeStructure, Detail: "an object has two members with the same name"}
		if !onType {
			vd.ResourceType, vd.Known, vd.ID = v.header(line)
		}
		if vd.Known {
			issue.Path = vd.ResourceType
		}
		vd.Issues = []Issue{issue}
		return vd
	}
	rt, rtState, id, version := topLevel(line)
	vd.ID, vd.Version = id, version
	switch rtState {
	case rtMissing:
		vd.Issues = []Issue{{Path: "resourceType", Code: codeStructure, Detail: "missing resourceType"}}
		return vd
	case rtNotString:
		vd.Issues = []Issue{{Path: "resourceType", Code: codeStructure, Detail: "resourceType is not a JSON string"}}
		return vd
	}
	vd.ResourceType, vd.Known = rt, v.known[rt]
	if !vd.Known {
		vd.Issues = []Issue{{Path: "resourceType", Code: codeNotSupported, Detail: "unknown resource type"}}
		return vd
	}
	issues := v.run(line, rt)
	if sh.upperName {
		issues = append(issues, Issue{Path: rt, Code: codeStructure, Detail: "element name starts with an upper-case letter"})
	}
	vd.Issues = finish(issues, rt)
	return vd
}

// header returns the resourceType, whether it is known and the id of a well-formed JSON object.
func (v *Validator) header(line []byte) (string, bool, string) {
	rt, state, id, _ := topLevel(line)
	if state != rtString {
		return "", false, id
	}
	return rt, v.known[rt], id
}

// run calls the library and maps everything it reports; a panic inside it becomes an exception issue.
func (v *Validator) run(line []byte, rt string) (issues []Issue) {
	defer func() {
		if r := recover(); r != nil {
			issues = []Issue{{Path: rt, Code: codeException, Detail: "validator failed unexpectedly"}}
		}
	}()
	col := &collector{root: rt}
	if _, err := v.unmarshal(line, col); err != nil {
		col.addError(err, "")
	}
	return col.issues
}

// finish sorts, deduplicates and caps issues, giving every issue a path.
func finish(issues []Issue, rt string) []Issue {
	for i := range issues {
		if issues[i].Path == "" {
			issues[i].Path = rt
		}
	}
	slices.SortFunc(issues, func(a, b Issue) int {
		return cmp.Or(strings.Compare(a.Path, b.Path), strings.Compare(a.Code, b.Code), strings.Compare(a.Detail, b.Detail))
	})
	issues = slices.Compact(issues)
	if len(issues) > maxIssues {
		more := len(issues) - maxIssues
		issues = append(issues[:maxIssues:maxIssues], Issue{Path: rt, Code: codeInfo, Detail: fmt.Sprintf("%d further issues left out", more)})
	}
	return issues
}

// precheck rejects what must not reach the library; ok is false with the issue to report.
func precheck(line []byte, sh shape) (Issue, bool) {
	if bytes.IndexByte(line, 0) >= 0 {
		return Issue{Code: codeStructure, Detail: "line contains a NUL byte"}, false
	}
	if !utf8.Valid(line) {
		return Issue{Code: codeStructure, Detail: "line is not valid UTF-8"}, false
	}
	if sh.depth > maxNestingDepth {
		return Issue{Code: codeTooLong, Detail: fmt.Sprintf("JSON nesting deeper than %d levels", maxNestingDepth)}, false
	}
	if !json.Valid(line) {
		detail := "malformed JSON"
		var raw json.RawMessage
		var se *json.SyntaxError
		if err := json.Unmarshal(line, &raw); errors.As(err, &se) {
			// The offset locates the problem without quoting it.
			detail = fmt.Sprintf("malformed JSON (syntax error at byte %d)", se.Offset)
		}
		return Issue{Code: codeStructure, Detail: detail}, false
	}
	if i := skipSpace(line, 0); i >= len(line) || line[i] != '{' {
		return Issue{Code: codeStructure, Detail: "not a JSON object"}, false
	}
	return Issue{}, true
}

// shape is what one byte scan of a line finds outside strings.
type shape struct {
	depth     int  // deepest nesting of objects and arrays (the scan stops once it exceeds the limit)
	upperName bool // some object key starts with an upper-case letter (after an optional "_")
}

// scanShape scans b once, without checking syntax.
func scanShape(b []byte, limit int) shape {
	var sh shape
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			end := stringEnd(b, i)
			if !sh.upperName {
				if j := skipSpace(b, end); j < len(b) && b[j] == ':' {
					sh.upperName = upperKey(b[i:end])
				}
			}
			i = end - 1
		case '{', '[':
			depth++
			if depth > sh.depth {
				sh.depth = depth
				if sh.depth > limit {
					return sh
				}
			}
		case '}', ']':
			depth--
		}
	}
	return sh
}

// upperKey reports whether a JSON object key (with quotes) starts with an upper-case letter, after an optional
// "_". The library accepts "BirthDate" for "birthDate", but FHIR JSON names are case-sensitive and the converter
// reads the original JSON, so such a key would be lost.
func upperKey(key []byte) bool {
	if bytes.IndexByte(key, '\\') >= 0 {
		s, ok := jsonString(key)
		if !ok {
			return false
		}
		key = []byte(`"` + s + `"`)
	}
	k := key[1:]
	if len(k) > 0 && k[0] == '_' {
		k = k[1:]
	}
	return len(k) > 0 && k[0] >= 'A' && k[0] <= 'Z'
}

type rtState int

const (
	rtMissing rtState = iota
	rtNotString
	rtString
)

// topLevel finds the top-level resourceType, id and version (see Verdict.Version) of a well-formed JSON object
// without decoding the rest. Like the library's map decoding, the last of duplicate keys wins (Validate rejects
// such lines before it asks).
func topLevel(b []byte) (rt string, state rtState, id, version string) {
	i := skipSpace(b, 0) + 1 // past '{'
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			return rt, state, id, version
		}
		kEnd := stringEnd(b, i)
		key := b[i:kEnd]
		i = skipSpace(b, kEnd) + 1 // past ':'
		i = skipSpace(b, i)
		vEnd := valueEnd(b, i)
		val := b[i:vEnd]
		switch {
		case keyIs(key, "resourceType"):
			if s, ok := jsonString(val); ok {
				rt, state = s, rtString
			} else {
				rt, state = "", rtNotString
			}
		case keyIs(key, "id"):
			id, _ = jsonString(val)
		case keyIs(key, "meta"):
			version = metaVersion(val)
		}
		i = skipSpace(b, vEnd)
		if i < len(b) && b[i] == ',' {
			i++
		}
	}
}

// metaVersion returns meta.versionId, else meta.lastUpdated, of the JSON value b (well-formed), "" when b is not
// an object or holds neither as a string.
func metaVersion(b []byte) string {
	if len(b) == 0 || b[0] != '{' {
		return ""
	}
	var versionID, lastUpdated string
	i := 1
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			break
		}
		kEnd := stringEnd(b, i)
		key := b[i:kEnd]
		i = skipSpace(b, kEnd) + 1 // past ':'
		i = skipSpace(b, i)
		vEnd := valueEnd(b, i)
		switch {
		case keyIs(key, "versionId"):
			versionID, _ = jsonString(b[i:vEnd])
		case keyIs(key, "lastUpdated"):
			lastUpdated, _ = jsonString(b[i:vEnd])
		}
		i = skipSpace(b, vEnd)
		if i < len(b) && b[i] == ',' {
			i++
		}
	}
	if versionID != "" {
		return versionID
	}
	return lastUpdated
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string starting at b[i] == '"' (len(b) if unterminated).
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the JSON value starting at b[i], in well-formed JSON.
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default:
		for ; i < len(b); i++ {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
		}
		return i
	}
}

// keyIs reports whether the JSON string key (with quotes) decodes to name.
func keyIs(key []byte, name string) bool {
	if bytes.IndexByte(key, '\\') < 0 {
		return len(key) == len(name)+2 && string(key[1:len(key)-1]) == name
	}
	s, ok := jsonString(key)
	return ok && s == name
}

// jsonString decodes a JSON string value; ok is false when raw is not a string.
func jsonString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), true
	}
	if raw[len(raw)-1] != '"' {
		return "", false
	}
	s, ok := appendUnquoted(nil, raw[1:len(raw)-1])
	if !ok {
		return "", false
	}
	return string(s), true
}

// collector is the ErrorReporter handed to the library: it keeps every validation error as an Issue.
type collector struct {
	root   string
	issues []Issue
}

func (c *collector) ReportValidationError(path string, err error) error {
	c.addError(err, path)
	return nil
}

// ReportValidationWarning ignores warnings: they do not make a resource invalid (v0.7.4 reports none).
func (c *collector) ReportValidationWarning(string, error) error { return nil }

// addError maps a library error (an UnmarshalError, a list of them, or anything else) into issues; path stands in
// for an error's own path when that is empty.
func (c *collector) addError(err error, path string) {
	for _, ue := range unmarshalErrors(err) {
		if ue == nil {
			c.issues = append(c.issues, Issue{Path: c.root, Code: codeException, Detail: "validator failed unexpectedly"})
			continue
		}
		if ue.Path == "" {
			ue.Path = path
		}
		c.issues = append(c.issues, mapError(*ue))
	}
}

// libError holds the fields of the library's internal jsonpbhelper.UnmarshalError that this package reads.
// Diagnostics may quote values: it is read only to locate an unknown contained resource type, never reported.
type libError struct{ Path, Details, Diagnostics string }

const libErrorPkg = "github.com/google/fhir/go/jsonformat/internal/jsonpbhelper"

// unmarshalErrors flattens err into the library's UnmarshalErrors. The type is internal to the library, so its
// exported fields are read by reflection. A nil element stands for an error of another kind; those come from
// fmt.Errorf calls that print protos and values, so nothing of them is kept.
func unmarshalErrors(err error) []*libError {
	rv := reflect.ValueOf(err)
	if !rv.IsValid() {
		return nil
	}
	t := rv.Type()
	switch {
	case t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct && isLib(t.Elem(), "UnmarshalError"):
		if rv.IsNil() {
			return []*libError{nil}
		}
		return []*libError{readLib(rv.Elem())}
	case t.Kind() == reflect.Slice && isLib(t, "UnmarshalErrorList"):
		var out []*libError
		for i := 0; i < rv.Len(); i++ {
			e := rv.Index(i)
			if e.IsNil() {
				continue
			}
			out = append(out, readLib(e.Elem()))
		}
		return out
	}
	return []*libError{nil}
}

func isLib(t reflect.Type, name string) bool { return t.PkgPath() == libErrorPkg && t.Name() == name }

func readLib(v reflect.Value) *libError {
	field := func(name string) string {
		f := v.FieldByName(name)
		if !f.IsValid() || f.Kind() != reflect.String {
			return ""
		}
		return f.String()
	}
	return &libError{Path: field("Path"), Details: field("Details"), Diagnostics: field("Diagnostics")}
}

var (
	// segmentRE matches one safe path segment: an element name (the library only puts names it recognised into
	// paths, except contained resource types) with optional indexes.
	segmentRE = regexp.MustCompile(`^_?[A-Za-z][A-Za-z0-9_]*(\[[0-9]+\])*$`)
	nameRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
)

// safePath keeps the leading segments of a library path that are element names; the rest is dropped.
func safePath(p string) string {
	if p == "" {
		return ""
	}
	segs := strings.Split(p, ".")
	for i, s := range segs {
		if !segmentRE.MatchString(s) {
			return strings.Join(segs[:i], ".")
		}
	}
	return p
}

func joinPath(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

// valueDetails are library Details that are fixed strings (verified in v0.7.4 source) and mean a bad primitive.
var valueDetails = map[string]bool{
	"expected binary data": true, "expected boolean": true, "expected code": true, "expected date": true,
	"expected datetime": true, "expected decimal": true, "expected ID": true, "expected instant": true,
	"expected integer": true, "expected OID": true, "expected positive integer": true,
	"invalid positive integer": true, "expected string": true, "invalid time": true,
	"invalid non-negative integer": true, "expected url": true, "expected uri": true, "expected canonical": true,
	"expected markdown": true, "expected xhtml": true, "expected UUID": true,
	"non-negative integer out of range 0..2,147,483,647": true,
	"non-negative integer out of range 1..2,147,483,647": true,
	"invalid Id format": true, "invalid Oid format": true, "invalid Uuid format": true, "invalid Code format": true,
	"invalid uri": true, "invalid url": true, "invalid canonical": true, "invalid reference": true,
}

var (
	refTypeRE = regexp.MustCompile(`^invalid reference to a [A-Za-z]+ resource, want [A-Za-z]+(, [A-Za-z]+)*$`)
	choiceRE  = regexp.MustCompile(`^cannot accept multiple values for [a-z_]+ field$`)
)

// mapError turns one library error into an Issue whose Detail holds no resource value.
func mapError(e libError) Issue {
	path := e.Path
	d := e.Details
	switch {
	case d == "unknown resource type":
		// The path ends with the unknown type name (a value): cut it and point at the resourceType element.
		if rt, err := strconv.Unquote(e.Diagnostics); err == nil && strings.HasSuffix(path, rt) {
			path = strings.TrimSuffix(strings.TrimSuffix(path, rt), ".")
		} else {
			path = ""
		}
		return Issue{Path: joinPath(safePath(path), "resourceType"), Code: codeNotSupported, Detail: "unknown resource type"}
	case d == "invalid resource type":
		return Issue{Path: joinPath(safePath(path), "resourceType"), Code: codeStructure, Detail: "resourceType is not a JSON string"}
	case strings.HasPrefix(d, "missing required field "):
		name, err := strconv.Unquote(strings.TrimPrefix(d, "missing required field "))
		if err != nil || !nameRE.MatchString(name) {
			return Issue{Path: safePath(path), Code: codeRequired, Detail: "missing required element"}
		}
		if name == "resourceType" {
			return Issue{Path: joinPath(safePath(path), name), Code: codeStructure, Detail: "missing resourceType"}
		}
		return Issue{Path: joinPath(safePath(path), name), Code: codeRequired, Detail: "missing required element"}
	case d == "invalid JSON":
		return Issue{Path: safePath(path), Code: codeStructure, Detail: "expected a JSON object"}
	case d == "expected array":
		return Issue{Path: safePath(path), Code: codeStructure, Detail: "expected a JSON array"}
	case d == "unknown field":
		return Issue{Path: safePath(path), Code: codeStructure, Detail: "unknown element"}
	case d == "invalid extension field" || d == "invalid field":
		return Issue{Path: safePath(path), Code: codeStructure, Detail: d}
	case choiceRE.MatchString(d):
		return Issue{Path: safePath(path), Code: codeStructure, Detail: "more than one type given for a choice element"}
	case strings.HasPrefix(d, "array length mismatch"):
		return Issue{Path: safePath(path), Code: codeStructure, Detail: "primitive value and extension arrays differ in length"}
	case strings.HasPrefix(d, "invalid type: "):
		return Issue{Path: safePath(path), Code: codeStructure, Detail: "element of an unsupported type"}
	case d == "expected UTF-8 encoding":
		return Issue{Path: safePath(path), Code: codeValue, Detail: "string is not valid UTF-8"}
	case valueDetails[d]:
		return Issue{Path: safePath(path), Code: codeValue, Detail: d}
	case strings.HasPrefix(d, "string contains invalid characters"):
		// The library appends the offending code point; it is left out.
		return Issue{Path: safePath(path), Code: codeValue, Detail: "string contains invalid characters"}
	case d == "code type mismatch":
		detail := "code outside its required value set"
		if i := strings.LastIndex(e.Diagnostics, " is not a "); i >= 0 {
			if typ := e.Diagnostics[i+len(" is not a "):]; nameRE.MatchString(typ) {
				detail += " (" + typ + ")"
			}
		}
		return Issue{Path: safePath(path), Code: codeCodeInvalid, Detail: detail}
	case d == "string exceeds maximum size of 1 MB":
		return Issue{Path: safePath(path), Code: codeTooLong, Detail: d}
	case strings.HasPrefix(d, "field exceeded the maximum nesting depth"):
		return Issue{Path: safePath(path), Code: codeTooLong, Detail: "element nested too deeply"}
	case refTypeRE.MatchString(d):
		return Issue{Path: safePath(path), Code: codeInvalid, Detail: d}
	}
	return Issue{Path: safePath(path), Code: codeInvalid, Detail: "invalid element"}
}
