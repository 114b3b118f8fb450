package transform

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math"
	"net/url"
	"slices"
	"unicode/utf8"

	"github.com/fhirlake/fhirlake/schema"
)

// This file is the fast validator: one pass over a line's bytes, a strict JSON tokenizer of its own, checked
// against the decoding plan (fastplan.go) with the rules of google/fhir/go v0.7.4 jsonformat as the reference
// path applies them (parse, then fhirvalidate: required fields, primitive formats, reference target types). It
// builds no proto and no map, and allocates nothing on the path of a valid resource beyond its id and version.
//
// Its answer is either "valid, as the reference would say" or "not sure". Every line it is not sure of (invalid
// lines, and valid ones in shapes it does not model: null values, escaped keys, duplicate keys, a required
// primitive with only its "_name" companion ...) goes to the reference path, which gives the verdict and the
// issues. So the issues of a rejected line are the reference's own, and parity rests on one property that the
// parity tests and fuzz targets check: whatever the fast validator accepts, the reference accepts too. The one
// exception is explain, which answers for a line whose only fault is absent required elements with the issues
// the reference gives it; the same tests hold those issues to the reference's.

// fastMaxDepth bounds the nesting the fast validator follows; deeper lines go to the reference path.
const fastMaxDepth = 200

// maxStringBytes is FHIR's (and the reference's) limit on a string value.
const maxStringBytes = 1 << 20

// uriCacheSize bounds the cache of url.Parse verdicts (code systems and profiles repeat on every line).
const uriCacheSize = 4096

// uriCacheKeyBytes is the longest URI whose verdict is cached.
const uriCacheKeyBytes = 512

// fastSlot is the state of one field of the object being checked.
type fastSlot struct {
	x, u   bool  // the key "name" (x) and "_name" (u) were seen
	nx, nu int32 // item counts of a repeated field
	opt    int32 // choice option + 1, 0 when none yet
}

// fastValidator checks lines against the plan. It is not safe for concurrent use: one per Worker.
type fastValidator struct {
	plan    *fastPlan
	b       []byte
	i       int
	depth   int
	slots   []fastSlot
	scratch []byte
	b64     []byte
	// uris caches url.Parse's verdicts. A KeyTable hashes a URI's length and its first and last eight bytes,
	// where a Go map hashed all of it: the lookups were 3% of a decoder's time.
	uris schema.KeyTable[bool]
	// meta is the span of the top-level meta object, for Verdict.Version.
	metaStart, metaEnd int
	idStart, idEnd     int
	// tree, when set, receives the tree of every line the validator accepts (jtree.built), built from the
	// tokens as they are read, for the converter.
	tree *jtree
	// collect is set during explain: an absent required element becomes an issue in missing, at its element
	// path as the reference writes it, instead of ending the check. path is where the check is, one frame per
	// segment of the reference's paths (the type, an element, a choice option, a nested resource's type), kept
	// only then.
	collect bool
	path    []pathFrame
	missing []Issue
}

func newFastValidator() (*fastValidator, error) {
	p, err := loadFastPlan()
	if err != nil {
		return nil, err
	}
	return &fastValidator{plan: p}, nil
}

// shed lets go of the scratch buffers that hold more than limit bytes. The tree is the converter's to shed.
func (v *fastValidator) shed(limit int) {
	v.slots, v.scratch, v.b64 = shedSlice(v.slots, limit), shedSlice(v.scratch, limit), shedSlice(v.b64, limit)
	v.path, v.missing = shedSlice(v.path, limit), shedSlice(v.missing, limit)
}

// validate returns the verdict of a line the reference path would find valid, and ok false when it cannot be
// sure (the caller then asks the reference path).
func (v *fastValidator) validate(line []byte) (vd Verdict, ok bool) {
	v.b, v.i, v.depth, v.slots = line, 0, 0, v.slots[:0]
	v.metaStart, v.metaEnd, v.idStart, v.idEnd = -1, -1, -1, -1
	defer func() { v.b = nil }()
	if v.tree != nil && !v.tree.reset(line) {
		return vd, false
	}
	v.ws()
	if !v.open('{') {
		return vd, false
	}
	rt, m, at, ok := v.resourceType()
	if !ok {
		return vd, false
	}
	if v.collect {
		v.path = append(v.path[:0], pathFrame{key: rt, index: -1}) // the root of the reference's paths
	}
	if !v.members(m, true, at, nil) {
		return vd, false
	}
	v.ws()
	if v.i != len(v.b) {
		return vd, false
	}
	vd.ResourceType, vd.Known = rt, true
	if v.tree != nil {
		v.tree.built = true
	}
	if v.idStart >= 0 {
		vd.ID, _ = jsonString(line[v.idStart:v.idEnd])
	}
	if v.metaStart >= 0 {
		vd.Version = metaVersion(line[v.metaStart:v.metaEnd])
	}
	return vd, true
}

// explain is a second look at a line validate was not sure of. It answers for a line whose one fault is
// required elements that are absent, as the reference checks them (everywhere but in contained resources),
// where the line would otherwise be valid. Its verdict is then the reference path's: the same issues, at the
// same paths ("Bundle.entry[0].resource.observation.status", "Observation.value.quantity.extension[0].url"),
// with the same codes and details. Any other line, ok false, goes to the reference path as before.
//
// The reference path needs about 40 times a line's size in memory for a resource it rejects (110 MB for
// r4-examples' 2.75 MB ImplementationGuide, which lacks name and status), so this keeps the largest invalid
// lines of an export from making the peaks of a run.
func (v *fastValidator) explain(line []byte) (vd Verdict, ok bool) {
	tree := v.tree
	v.tree, v.collect, v.missing = nil, true, v.missing[:0]
	defer func() {
		clear(v.missing) // the issues' paths are not kept for the next line
		v.tree, v.collect, v.path, v.missing = tree, false, v.path[:0], v.missing[:0]
	}()
	vd, ok = v.validate(line)
	if !ok || len(v.missing) == 0 {
		return Verdict{}, false
	}
	vd.Issues = finish(slices.Clone(v.missing), vd.ResourceType)
	return vd, true
}

// resourceType reads a resource object's resourceType, just after its opening brace, and returns the plan of
// that type and where members is to go on. The reference takes the members in any order: when resourceType is
// not the first (an export that sorts its keys puts it after "entry" or "contact"), it is looked for among the
// object's members, which are stepped over without being checked or added to the tree, and members then reads
// the object from its first member, resourceType among the others.
func (v *fastValidator) resourceType() (string, *fmsg, opening, bool) {
	v.ws()
	at := afterType
	mark := v.i
	tree := v.tree
	v.tree = nil // the first key is added to the tree by members, whichever it is
	defer func() { v.tree = tree }()
	for {
		ks, ke, ok := v.key()
		if !ok {
			return "", nil, 0, false
		}
		v.ws()
		if !v.eat(':') {
			return "", nil, 0, false
		}
		v.ws()
		if string(v.b[ks:ke]) == "resourceType" {
			break
		}
		if at = typeLater; !v.skip(v.depth + 1) {
			return "", nil, 0, false
		}
		v.ws()
		if !v.eat(',') {
			return "", nil, 0, false // the object ended without a resourceType
		}
		v.ws()
	}
	s, e, esc, ok := v.str()
	if !ok || esc {
		return "", nil, 0, false
	}
	m, known := v.plan.resources.Get(v.b[s+1 : e-1])
	if !known {
		return "", nil, 0, false
	}
	if at == typeLater {
		v.i = mark
	} else if tree != nil {
		tree.leaf(jString, mark, mark+len(`"resourceType"`), false)
		tree.leaf(jString, s, e, false)
	}
	v.ws()
	return string(m.name.Name()), m, at, true // the plan's own string: no allocation per line
}

// skip steps over one JSON value at v.i, at nesting depth, checking only that it is well-formed.
func (v *fastValidator) skip(depth int) bool {
	switch v.peek() {
	case '"':
		_, _, _, ok := v.str()
		return ok
	case 't':
		return v.lit("true")
	case 'f':
		return v.lit("false")
	case 'n':
		return v.lit("null")
	case '{', '[':
	default:
		_, _, ok := v.number()
		return ok
	}
	if depth > fastMaxDepth {
		return false
	}
	end := byte(']')
	if v.peek() == '{' {
		end = '}'
	}
	v.i++
	v.ws()
	if v.eat(end) {
		return true
	}
	for {
		if end == '}' {
			if _, _, ok := v.key(); !ok {
				return false
			}
			v.ws()
			if !v.eat(':') {
				return false
			}
			v.ws()
		}
		if !v.skip(depth + 1) {
			return false
		}
		v.ws()
		if v.eat(',') {
			v.ws()
			continue
		}
		return v.eat(end)
	}
}

// opening is where members starts reading an object.
type opening uint8

const (
	inBrace   opening = iota // just after the opening brace of an object that is not a resource
	afterType                // after a resource's resourceType, its first member
	typeLater                // just after the opening brace of a resource whose resourceType comes later
)

// members checks the members of an object of message m from where at says, through the closing brace. validate
// is false inside contained resources, which the reference parses but does not validate. ref is the element
// type when m is a Reference.
func (v *fastValidator) members(m *fmsg, validate bool, at opening, ref *fopt) bool {
	if v.depth++; v.depth > fastMaxDepth {
		return false
	}
	base := len(v.slots)
	v.slots = slices.Grow(v.slots, len(m.fields))[:base+len(m.fields)]
	clear(v.slots[base:])
	unders := 0 // "_name" keys seen
	root := v.depth == 1
	// After a resourceType the next byte is ',' or '}'; a fresh object starts with a key or '}'.
	empty := false
	typeSeen := false
	if at == afterType {
		if v.close('}') {
			empty = true
		} else if !v.eat(',') {
			return false
		}
	} else {
		v.ws()
		empty = v.close('}')
	}
	if !empty {
		for {
			v.ws()
			ks, ke, ok := v.key()
			if !ok {
				return false
			}
			v.ws()
			if !v.eat(':') {
				return false
			}
			v.ws()
			k, known := m.keys.Get(v.b[ks:ke])
			if !known {
				if at != typeLater || typeSeen || string(v.b[ks:ke]) != "resourceType" {
					return false
				}
				typeSeen = true // resourceType found it already: its value is that string
				if _, _, esc, ok := v.str(); !ok || esc {
					return false
				}
				v.ws()
				if v.eat(',') {
					continue
				}
				if v.close('}') {
					break
				}
				return false
			}
			f := &m.fields[k.field]
			si := base + k.field
			sl := &v.slots[si]
			if k.under {
				if sl.u {
					return false
				}
				sl.u = true
				unders++
			} else {
				if sl.x {
					return false
				}
				sl.x = true
			}
			o := &f.fopt
			if k.opt >= 0 {
				if sl.opt != 0 && sl.opt != int32(k.opt)+1 {
					return false
				}
				sl.opt = int32(k.opt) + 1
				o = &f.choice[k.opt]
			}
			start := v.i
			mark := 0
			if v.collect {
				mark = len(v.path)
				v.path = append(v.path, pathFrame{key: f.name, index: -1})
				if k.opt >= 0 {
					v.path = append(v.path, pathFrame{key: o.name, index: -1})
				}
			}
			var n int32
			switch {
			case k.ref:
				if !v.reference(ref, validate) {
					return false
				}
			case f.repeated:
				if n, ok = v.array(o, k.under, validate); !ok {
					return false
				}
			case k.under:
				if !v.open('{') {
					return false
				}
				if !v.members(o.msg, validate, inBrace, nil) {
					return false
				}
			default:
				if !v.item(o, validate) {
					return false
				}
			}
			if root {
				switch m.fields[k.field].name {
				case "id":
					if !k.under {
						v.idStart, v.idEnd = start, v.i
					}
				case "meta":
					v.metaStart, v.metaEnd = start, v.i
				}
			}
			if v.collect {
				v.path = v.path[:mark]
			}
			sl = &v.slots[si] // nested objects may have grown v.slots
			if k.under {
				sl.nu = n
			} else {
				sl.nx = n
			}
			v.ws()
			if v.eat(',') {
				continue
			}
			if v.close('}') {
				break
			}
			return false
		}
	}
	if at == typeLater && !typeSeen {
		return false
	}
	for i := 0; unders > 0 && i < len(m.fields); i++ {
		sl := v.slots[base+i]
		// A companion may come without its value (a primitive with only an extension or an id): the reference
		// takes it. With its value, a repeated element's two arrays must be as long as each other.
		if sl.u && sl.x && sl.nu != sl.nx {
			return false
		}
	}
	if validate {
		for _, r := range m.required {
			sl := v.slots[base+r]
			if !sl.x || (m.fields[r].repeated && sl.nx == 0) {
				// explain answers only for an element with neither its key nor a "_name" companion: the
				// reference takes a companion alone as the element, and what it makes of "[]" is its own.
				if !v.collect || sl.x || sl.u {
					return false
				}
				path := append(append(appendPath(nil, v.path), '.'), m.fields[r].name...)
				v.missing = append(v.missing, Issue{Path: string(path), Code: codeRequired, Detail: "missing required element"})
			}
		}
	}
	v.slots = v.slots[:base]
	v.depth--
	return true
}

// array checks a JSON array of a repeated element and returns its length.
func (v *fastValidator) array(o *fopt, under, validate bool) (int32, bool) {
	if !v.open('[') {
		return 0, false
	}
	v.ws()
	if v.close(']') {
		return 0, true
	}
	var n int32
	top := len(v.path) - 1 // the array's own element, which members pushed
	for {
		v.ws()
		if v.collect {
			v.path[top].index = int(n)
		}
		switch {
		case under && v.peek() == 'n':
			// A null companion stands for an item with no id or extension, as R4 JSON has it, but the reference
			// rejects it whatever the type (TestValidateNullCompanion): left to the reference.
			return 0, false
		case under:
			if !v.open('{') || !v.members(o.msg, validate, inBrace, nil) {
				return 0, false
			}
		default:
			if !v.item(o, validate) {
				return 0, false
			}
		}
		n++
		v.ws()
		if v.eat(',') {
			continue
		}
		if v.close(']') {
			return n, true // members pops the array's frame
		}
		return 0, false
	}
}

// item checks one element value (not null).
func (v *fastValidator) item(o *fopt, validate bool) bool {
	if o.pk == pkMessage {
		if !v.open('{') {
			return false
		}
		switch o.msg.kind {
		case mkResource:
			_, m, at, ok := v.resourceType()
			if !ok {
				return false
			}
			mark := len(v.path)
			if v.collect {
				v.path = append(v.path, pathFrame{key: m.pathName, index: -1})
			}
			ok = v.members(m, validate && !o.msg.contained, at, nil)
			v.path = v.path[:mark]
			return ok
		case mkReference:
			return v.members(o.msg, validate, inBrace, o)
		}
		return v.members(o.msg, validate, inBrace, nil)
	}
	return v.primitive(o, validate)
}

// primitive checks a primitive's JSON value as the reference parses (parsePrimitiveType) and, when validate,
// validates it (fhirvalidate.validatePrimitives).
func (v *fastValidator) primitive(o *fopt, validate bool) bool {
	switch o.pk {
	case pkBool:
		return v.lit("true") || v.lit("false")
	case pkDecimal:
		// The reference matches the raw JSON against the Decimal regex, which is JSON's number grammar.
		_, _, ok := v.number()
		return ok
	case pkInteger:
		s, e, ok := v.number()
		if !ok {
			return false
		}
		neg := v.b[s] == '-'
		if neg {
			s++
		}
		val, ok := digits(v.b[s:e])
		return ok && !(neg && val == 0) && (val <= math.MaxInt32 || neg && val == -math.MinInt32)
	case pkPositiveInt, pkUnsignedInt:
		s, e, ok := v.number()
		if !ok {
			return false
		}
		val, ok := digits(v.b[s:e])
		if !ok || (o.pk == pkPositiveInt && val == 0) || val > math.MaxUint32 {
			return false
		}
		return !validate || val <= math.MaxInt32
	case pkBase64:
		s, e, _, ok := v.str()
		return ok && v.base64(v.b[s+1:e-1])
	case pkUnsupported, pkMessage:
		return false
	}
	s, e, esc, ok := v.str()
	if !ok {
		return false
	}
	raw := v.b[s+1 : e-1]
	switch o.pk {
	case pkText:
		// markdown and xhtml: any string, but an empty Narrative.div is a missing required value
		return !validate || !o.msg.valueRequired || len(raw) > 0
	case pkDate, pkDateTime, pkInstant, pkTime, pkEnum:
	default:
		if !validate || o.vk == vkNone {
			return true
		}
	}
	val := raw
	if esc {
		if val, ok = v.unescape(raw); !ok {
			return false
		}
	}
	switch o.pk {
	case pkDate:
		return isDate(val)
	case pkDateTime:
		return isDateTime(val)
	case pkInstant:
		return isInstant(val)
	case pkTime:
		return isTime(val)
	case pkEnum:
		return v.code(o.enum, val)
	}
	if !validate {
		return true
	}
	return v.validString(o.vk, val, esc)
}

// validString applies fhirvalidate's check of a string-valued primitive, s, unescaped from JSON when esc.
func (v *fastValidator) validString(vk vkind, s []byte, esc bool) bool {
	switch vk {
	case vkString:
		// str has rejected every control character written as itself: only an escape can make one.
		return len(s) <= maxStringBytes && !(esc && hasInvalidChar(s))
	case vkID:
		return isID(s)
	case vkOID:
		return isOID(s)
	case vkUUID:
		return isUUID(s)
	case vkCode:
		return isCode(s)
	case vkURL:
		return v.validURL(s)
	}
	return true
}

// reference checks Reference.reference as the reference normalises it: "Type/id" and "Type/id/_history/v" of a
// known type become typed references whose type is checked against the element's targets.
func (v *fastValidator) reference(o *fopt, validate bool) bool {
	s, e, esc, ok := v.str()
	if !ok || esc || o == nil {
		return false
	}
	ref := v.b[s+1 : e-1]
	if len(ref) > maxStringBytes {
		return false
	}
	if len(ref) == 0 || ref[0] == '#' {
		return true
	}
	// Type/id, or Type/id/_history/v: one slash or three. The slashes are found one after the other, and most
	// references have one, so the scan ends at the first search that finds none.
	var slash [4]int
	n := 0
	for i := 0; n < len(slash); n++ {
		j := bytes.IndexByte(ref[i:], '/')
		if j < 0 {
			break
		}
		i += j
		slash[n] = i
		i++
	}
	typ := ref[:slash[0]]
	var history []byte
	switch n {
	case 1:
	case 3:
		if string(ref[slash[1]+1:slash[2]]) != "_history" {
			return true
		}
		history = ref[slash[2]+1:]
	default:
		return true // stays a plain URI: a String without escapes, already checked for size
	}
	inR4, known := v.plan.refFields.Get(typ)
	if !known {
		return true
	}
	if !inR4 {
		return false // a type of another FHIR version: the reference fails to normalise it
	}
	if !validate {
		return true
	}
	if history != nil && !isID(history) {
		return false
	}
	if len(o.refTypes) == 0 {
		return true
	}
	for _, t := range o.refTypes {
		if t == "Resource" || t == string(typ) {
			return true
		}
	}
	return false
}

// code matches a specialised code as jsonpbhelper.UnmarshalCode does: the enum value name of its upper-cased
// form with "-" as "_", else an original code. Non-ASCII codes go to the reference path (Unicode case mapping).
func (v *fastValidator) code(e *fenum, s []byte) bool {
	if _, ok := e.orig.Get(s); ok {
		return true
	}
	buf := v.b64[:0]
	for _, c := range s {
		switch {
		case c >= utf8.RuneSelf:
			return false
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c == '-':
			c = '_'
		}
		buf = append(buf, c)
	}
	v.b64 = buf
	_, ok := e.names.Get(buf)
	return ok
}

func (v *fastValidator) validURL(s []byte) bool {
	if len(s) > uriCacheKeyBytes {
		// A data: URL, say, is parsed every time: cached, it would stay until the cache is cleared.
		_, err := url.Parse(string(s))
		return err == nil
	}
	if ok, hit := v.uris.Get(s); hit {
		return ok
	}
	_, err := url.Parse(string(s))
	if v.uris.Len() >= uriCacheSize {
		v.uris = schema.KeyTable[bool]{}
	}
	v.uris.Put(string(s), err == nil)
	return err == nil
}

// base64 checks base64Binary content as the reference does: the raw JSON string content (escapes are not
// decoded), blanks only in a regular stride, then standard padded base64.
func (v *fastValidator) base64(raw []byte) bool {
	p := append(v.b64[:0], raw...)
	v.b64 = p
	n, stride, sep := 0, 0, 0
	chunk := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != ' ' {
			p[n] = c
			n++
			continue
		}
		cur := i - chunk
		if stride == 0 {
			stride = cur
		}
		if cur != stride {
			return false
		}
		chunk = i
		for ; i < len(p) && p[i] == ' '; i++ {
		}
		cs := i - chunk
		if sep == 0 {
			sep = cs
		}
		if cs != sep {
			return false
		}
		chunk = i
		i--
	}
	_, err := base64.StdEncoding.Decode(p[:n], p[:n])
	return err == nil
}

// The tokenizer. It accepts only what encoding/json accepts, and in addition refuses what the fast path does
// not model: keys with escapes, strings with escaped surrogates.

func (v *fastValidator) ws() {
	for v.i < len(v.b) {
		switch v.b[v.i] {
		case ' ', '\t', '\n', '\r':
			v.i++
		default:
			return
		}
	}
}

func (v *fastValidator) peek() byte {
	if v.i < len(v.b) {
		return v.b[v.i]
	}
	return 0
}

func (v *fastValidator) eat(c byte) bool {
	if v.i < len(v.b) && v.b[v.i] == c {
		v.i++
		return true
	}
	return false
}

func (v *fastValidator) lit(s string) bool {
	if len(v.b)-v.i >= len(s) && string(v.b[v.i:v.i+len(s)]) == s {
		if v.tree != nil {
			kind := jNull
			switch s {
			case "true":
				kind = jTrue
			case "false":
				kind = jFalse
			}
			v.tree.leaf(kind, v.i, v.i+len(s), false)
		}
		v.i += len(s)
		return true
	}
	return false
}

// open eats the opening bracket c of an object or array.
func (v *fastValidator) open(c byte) bool {
	if !v.eat(c) {
		return false
	}
	if v.tree != nil {
		kind := jArray
		if c == '{' {
			kind = jObject
		}
		v.tree.begin(kind, v.i-1)
	}
	return true
}

// close eats the closing bracket c of an object or array.
func (v *fastValidator) close(c byte) bool {
	if !v.eat(c) {
		return false
	}
	if v.tree != nil {
		v.tree.end(v.i)
	}
	return true
}

// key reads an object key without escapes and returns the span of its content.
func (v *fastValidator) key() (int, int, bool) {
	s, e, esc, ok := v.str()
	if !ok || esc {
		return 0, 0, false
	}
	return s + 1, e - 1, true
}

// str reads a JSON string at v.i and returns its span with quotes and whether it holds escapes. It checks
// UTF-8 and escapes; a \u escape of a surrogate is refused (the reference's decoder treats them its own way).
func (v *fastValidator) str() (start, end int, esc, ok bool) {
	if v.peek() != '"' {
		return 0, 0, false, false
	}
	start = v.i
	i := v.i + 1
	b := v.b
	for i < len(b) {
		if i = skipPlain(b, i); i >= len(b) {
			break
		}
		c := b[i]
		switch {
		case c == '"':
			v.i = i + 1
			if v.tree != nil {
				v.tree.leaf(jString, start, v.i, esc)
			}
			return start, v.i, esc, true
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return 0, 0, false, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, ok := hex4(b, i+2)
				if !ok || (r >= 0xD800 && r <= 0xDFFF) {
					return 0, 0, false, false
				}
				i += 6
			default:
				return 0, 0, false, false
			}
		case c < 0x20:
			return 0, 0, false, false
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, 0, false, false
			}
			i += size
		}
	}
	return 0, 0, false, false
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// unescape decodes the content of a JSON string the tokenizer accepted into scratch.
func (v *fastValidator) unescape(raw []byte) ([]byte, bool) {
	out, ok := appendUnquoted(v.scratch[:0], raw)
	v.scratch = out
	return out, ok
}

// number reads a JSON number and returns its span.
func (v *fastValidator) number() (int, int, bool) {
	b, i := v.b, v.i
	start := i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return 0, 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return 0, 0, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return 0, 0, false
		}
	}
	v.i = i
	if v.tree != nil {
		v.tree.leaf(jNumber, start, i, false)
	}
	return start, i, true
}

// digits parses an unsigned decimal integer without a leading zero (but "0"), up to 10 digits.
func digits(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 10 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// Lexical rules of the reference: its regexes (jsonpbhelper and the value_regex annotations) and the time
// layouts it parses with.

// hasInvalidChar reports a code point below 32 other than tab, newline and carriage return.
func hasInvalidChar(s []byte) bool {
	for _, c := range s {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' {
			return true
		}
	}
	return false
}

// charClass sorts the bytes for isID and isCode, which look each byte up rather than compare it with ranges: ids
// (UUIDs) and codes mix letters, digits and marks at random, and a branch per class mispredicted often enough to
// show in the profile.
var charClass = func() (t [256]uint8) {
	for c := range 256 {
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' {
			t[c] |= classID
		}
		switch c {
		case ' ', '\t', '\n', '\f', '\r':
			t[c] |= classSpace
		}
	}
	return t
}()

const (
	classID    = 1 << iota // [A-Za-z0-9\-\.]
	classSpace             // RE2's ASCII \s
)

// isID matches [A-Za-z0-9\-\.]{1,64}.
func isID(s []byte) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	all := uint8(classID)
	for _, c := range s {
		all &= charClass[c]
	}
	return all != 0
}

// isCode matches [^\s]+(\s[^\s]+)* with RE2's ASCII \s: no space first or last, nor two in a row.
func isCode(s []byte) bool {
	if len(s) == 0 {
		return false
	}
	prev := uint8(classSpace) // as if a space came before s
	twice := uint8(0)
	for _, c := range s {
		sp := charClass[c] & classSpace
		twice |= sp & prev
		prev = sp
	}
	return twice == 0 && prev == 0
}

// isOID matches urn:oid:[0-2](\.(0|[1-9][0-9]*))+.
func isOID(s []byte) bool {
	const p = "urn:oid:"
	if len(s) < len(p)+3 || string(s[:len(p)]) != p {
		return false
	}
	s = s[len(p):]
	if s[0] < '0' || s[0] > '2' {
		return false
	}
	s = s[1:]
	arcs := 0
	for len(s) > 0 {
		if s[0] != '.' || len(s) < 2 {
			return false
		}
		s = s[1:]
		j := 0
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == 0 || (j > 1 && s[0] == '0') {
			return false
		}
		s = s[j:]
		arcs++
	}
	return arcs > 0
}

// isUUID matches urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}.
func isUUID(s []byte) bool {
	const p = "urn:uuid:"
	if len(s) != len(p)+36 || string(s[:len(p)]) != p {
		return false
	}
	for i, c := range s[len(p):] {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

func num2(s []byte, i int) (int, bool) {
	if i+2 > len(s) || s[i] < '0' || s[i] > '9' || s[i+1] < '0' || s[i+1] > '9' {
		return 0, false
	}
	return int(s[i]-'0')*10 + int(s[i+1]-'0'), true
}

// calendarDate checks YYYY, YYYY-MM or YYYY-MM-DD (a real day) at the start of s and returns its length, 4, 7
// or 10: the reference's date regex together with time.Parse of its layouts.
func calendarDate(s []byte) int {
	if len(s) < 4 {
		return 0
	}
	year := 0
	for _, c := range s[:4] {
		if c < '0' || c > '9' {
			return 0
		}
		year = year*10 + int(c-'0')
	}
	if len(s) == 4 || s[4] != '-' {
		return 4
	}
	month, ok := num2(s, 5)
	if !ok || month < 1 || month > 12 {
		return 0
	}
	if len(s) == 7 || s[7] != '-' {
		return 7
	}
	day, ok := num2(s, 8)
	if !ok || day < 1 || day > daysIn(month, year) {
		return 0
	}
	return 10
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// isDate: YYYY, YYYY-MM or YYYY-MM-DD.
func isDate(s []byte) bool {
	n := calendarDate(s)
	return n > 0 && n == len(s)
}

// clock checks hh:mm:ss(.f+)? at the start of s and returns its length.
func clock(s []byte) int {
	h, ok1 := num2(s, 0)
	m, ok2 := num2(s, 3)
	sec, ok3 := num2(s, 6)
	if !ok1 || !ok2 || !ok3 || s[2] != ':' || s[5] != ':' || h > 23 || m > 59 || sec > 59 {
		return 0
	}
	n := 8
	if n < len(s) && s[n] == '.' {
		d := n + 1
		for d < len(s) && s[d] >= '0' && s[d] <= '9' {
			d++
		}
		if d == n+1 {
			return 0
		}
		n = d
	}
	return n
}

// zone checks Z or (+|-)hh:mm with the hours 00-13 or 14:00, the whole of s.
func zone(s []byte) bool {
	if len(s) == 1 {
		return s[0] == 'Z'
	}
	if len(s) != 6 || (s[0] != '+' && s[0] != '-') || s[3] != ':' {
		return false
	}
	h, ok1 := num2(s, 1)
	m, ok2 := num2(s, 4)
	if !ok1 || !ok2 {
		return false
	}
	return (h <= 13 && m <= 59) || (h == 14 && m == 0)
}

// isInstant: YYYY-MM-DDThh:mm:ss(.f+)? with a zone.
func isInstant(s []byte) bool {
	if calendarDate(s) != 10 || len(s) < 20 || s[10] != 'T' {
		return false
	}
	n := clock(s[11:])
	if n == 0 {
		return false
	}
	return zone(s[11+n:])
}

// isDateTime: a date, or an instant's form.
func isDateTime(s []byte) bool {
	n := calendarDate(s)
	if n == 0 {
		return false
	}
	if n == len(s) {
		return true
	}
	return n == 10 && isInstant(s)
}

// isTime: hh:mm:ss(.f+)?.
func isTime(s []byte) bool {
	return len(s) >= 8 && clock(s) == len(s)
}

// String implements fmt.Stringer for debugging plans.
func (k fkey) String() string {
	return fmt.Sprintf("field %d opt %d under %v", k.field, k.opt, k.under)
}
