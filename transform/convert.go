package transform

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/fhirlake/fhirlake/schema"
)

// This file turns the original JSON of a validated resource into one row of its type's Arrow record builder,
// following the schema Node tree, so values stay verbatim (dates, codes, references as written).
//
// A line becomes a flat tree of JSON nodes (jtree): the fast validator builds it from the tokens it reads anyway
// when it accepts the line, and the converter parses lines that came another way. The tree is then walked once
// against the schema, appending as it goes. A value that would not convert stops the walk, and the row's columns
// are truncated back to the rows before it (col.truncate), so a failure never leaves a partial row. Lines reach
// the converter validated, so that is rare; walking twice (a check, then the appends) cost a fifth of the
// conversion.

// jkind is the kind of a JSON value.
type jkind uint8

const (
	jNull jkind = iota
	jFalse
	jTrue
	jNumber
	jString
	jArray
	jObject
)

// jnode is one JSON value of a parsed line: its byte span (strings with their quotes) and, for arrays and
// objects, its children in jtree.kids[first:first+n] (an object's are key, value, key, value ...).
type jnode struct {
	kind       jkind
	escaped    bool // a string holding backslash escapes
	start, end int32
	first, n   int32
}

// maxJSONDepth bounds the parser's recursion; the Validator rejects lines nested deeper than 1000 levels.
const maxJSONDepth = 1100

var errMalformed = errors.New("malformed JSON")

// jtree is a parsed line. Its slices are reused from line to line.
type jtree struct {
	src   []byte
	nodes []jnode
	kids  []int32
	stack []int32    // child indices of the open containers, innermost last
	open  []openNode // the open containers
	pos   int
	depth int
	str   []byte // unescaped string scratch
	// built is set when the fast validator, which tokenizes every line it accepts, has built the tree of src
	// (node 0 the root), so that converting src needs no second parse.
	built bool
}

// openNode is a container being parsed: its node and where its children start on the stack.
type openNode struct{ idx, mark int32 }

// parse parses src (which must stay unchanged while the tree is used) and returns the root node.
func (t *jtree) parse(src []byte) (int32, error) {
	if !t.reset(src) {
		return -1, fmt.Errorf("line of %d bytes is too long to convert", len(src))
	}
	if err := t.value(); err != nil {
		return -1, err
	}
	t.space()
	if t.pos != len(src) {
		return -1, errMalformed
	}
	return 0, nil
}

// reset starts a tree for src, or reports false when src is too long for the tree's int32 offsets.
func (t *jtree) reset(src []byte) bool {
	t.src, t.pos, t.depth, t.built = src, 0, 0, false
	t.nodes, t.kids, t.stack, t.open = t.nodes[:0], t.kids[:0], t.stack[:0], t.open[:0]
	return len(src) < math.MaxInt32
}

// holds reports whether the tree was built for line (the same bytes, not a copy) and not used since.
func (t *jtree) holds(line []byte) bool {
	return t.built && len(t.src) == len(line) && (len(line) == 0 || &t.src[0] == &line[0])
}

// begin opens a container node whose opening bracket is at start.
func (t *jtree) begin(kind jkind, start int) {
	t.open = append(t.open, openNode{idx: int32(len(t.nodes)), mark: int32(len(t.stack))})
	n := t.node()
	n.kind, n.escaped, n.start = kind, false, int32(start)
}

// end closes the innermost open container at end (just past its closing bracket): its children move from the
// stack to kids, and it takes their place as a child of its own container.
func (t *jtree) end(end int) {
	o := t.open[len(t.open)-1]
	t.open = t.open[:len(t.open)-1]
	n := &t.nodes[o.idx]
	n.first, n.n, n.end = int32(len(t.kids)), int32(len(t.stack))-o.mark, int32(end)
	t.kids = append(t.kids, t.stack[o.mark:]...)
	t.stack = append(t.stack[:o.mark], o.idx)
}

// leaf adds a scalar node spanning [start, end) as a child of the innermost open container.
func (t *jtree) leaf(kind jkind, start, end int, escaped bool) {
	t.stack = append(t.stack, int32(len(t.nodes)))
	n := t.node()
	n.kind, n.escaped, n.start, n.end, n.first, n.n = kind, escaped, int32(start), int32(end), 0, 0
}

// node adds a node to the tree and returns it for the caller to fill in, field by field: a composite literal
// appended whole is built on the stack and copied with loads that straddle its stores, which stalls the CPU
// once for every value of every line.
func (t *jtree) node() *jnode {
	i := len(t.nodes)
	if i == cap(t.nodes) {
		t.nodes = append(t.nodes, jnode{})
	} else {
		t.nodes = t.nodes[:i+1]
	}
	return &t.nodes[i]
}

func (t *jtree) space() {
	for t.pos < len(t.src) {
		switch t.src[t.pos] {
		case ' ', '\t', '\n', '\r':
			t.pos++
		default:
			return
		}
	}
}

// value parses one JSON value into the tree.
func (t *jtree) value() error {
	t.space()
	if t.pos >= len(t.src) {
		return errMalformed
	}
	start := t.pos
	var kind jkind
	esc := false
	switch c := t.src[t.pos]; {
	case c == '{' || c == '[':
		kind = jArray
		if c == '{' {
			kind = jObject
		}
		t.begin(kind, start)
		return t.container(kind == jObject)
	case c == '"':
		kind = jString
		var err error
		if esc, err = t.scanString(); err != nil {
			return err
		}
	case c == 't':
		kind = jTrue
		if err := t.literal("true"); err != nil {
			return err
		}
	case c == 'f':
		kind = jFalse
		if err := t.literal("false"); err != nil {
			return err
		}
	case c == 'n':
		kind = jNull
		if err := t.literal("null"); err != nil {
			return err
		}
	case c == '-' || (c >= '0' && c <= '9'):
		kind = jNumber
		for t.pos < len(t.src) && isNumberByte(t.src[t.pos]) {
			t.pos++
		}
	default:
		return errMalformed
	}
	t.leaf(kind, start, t.pos, esc)
	return nil
}

func isNumberByte(c byte) bool {
	return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

func (t *jtree) literal(lit string) error {
	if !bytes.HasPrefix(t.src[t.pos:], []byte(lit)) {
		return errMalformed
	}
	t.pos += len(lit)
	return nil
}

// scanString moves past the string starting at t.pos and says whether it holds escapes.
func (t *jtree) scanString() (bool, error) {
	esc := false
	for t.pos++; t.pos < len(t.src); {
		if t.pos = skipPlain(t.src, t.pos); t.pos >= len(t.src) {
			break
		}
		switch c := t.src[t.pos]; {
		case c == '"':
			t.pos++
			return esc, nil
		case c == '\\':
			esc = true
			t.pos += 2
		case c < 0x20:
			return false, errMalformed
		default:
			t.pos++
		}
	}
	return false, errMalformed
}

func (t *jtree) container(object bool) error {
	if t.depth++; t.depth > maxJSONDepth {
		return fmt.Errorf("JSON nested deeper than %d levels", maxJSONDepth)
	}
	closer := byte(']')
	if object {
		closer = '}'
	}
	t.pos++
	t.space()
	if t.pos < len(t.src) && t.src[t.pos] == closer {
		t.pos++
	} else {
		for {
			if object {
				t.space()
				if t.pos >= len(t.src) || t.src[t.pos] != '"' {
					return errMalformed
				}
				if err := t.value(); err != nil {
					return err
				}
				t.space()
				if t.pos >= len(t.src) || t.src[t.pos] != ':' {
					return errMalformed
				}
				t.pos++
			}
			if err := t.value(); err != nil {
				return err
			}
			t.space()
			if t.pos >= len(t.src) {
				return errMalformed
			}
			if t.src[t.pos] == ',' {
				t.pos++
				continue
			}
			if t.src[t.pos] != closer {
				return errMalformed
			}
			t.pos++
			break
		}
	}
	t.end(t.pos)
	t.depth--
	return nil
}

// children returns the child node indices of an array or object node.
func (t *jtree) children(i int32) []int32 {
	n := &t.nodes[i]
	return t.kids[n.first : n.first+n.n]
}

func (t *jtree) raw(i int32) []byte {
	n := &t.nodes[i]
	return t.src[n.start:n.end]
}

// text returns the content of a string node, unescaped. The bytes are valid until the next call.
func (t *jtree) text(i int32) ([]byte, error) {
	n := &t.nodes[i]
	if !n.escaped {
		return t.src[n.start+1 : n.end-1], nil
	}
	out, ok := appendUnquoted(t.str[:0], t.src[n.start+1:n.end-1])
	if !ok {
		return nil, errMalformed
	}
	t.str = out
	return out, nil
}

// plan binds a schema Node to the col that receives its values. Plans are built once per resource type per
// Worker, with their cols, which start a new batch whenever a flush takes their arrays.
type plan struct {
	node *schema.Node
	// keys is a copy of node's key table (schema.Node.Keys), which shares its slots: looked up for every member
	// of every object, it is read here rather than through the node and the table's own header, two loads that
	// each missed the cache often enough to show.
	keys schema.KeyTable[schema.Member]
	// The node's fields the walk reads for every value, copied here, next to the rest of the plan.
	kind     schema.Kind
	scalar   schema.Scalar
	derive   schema.Derived
	repeated bool
	key      string // JSON key: the element name, or for a choice child the full name ("valueQuantity")
	col      *col   // the element's column: a list col when node.Repeated; nil for the root
	elem     *col   // the col of one element: col's element col, or col
	// kids are the plans of the node's children, in schema order, each made on first use (kid): most elements of
	// a FHIR type never occur in a given export, and their columns stay null without a plan or a col.
	kids []*plan
	// derived are the indices of the kids whose columns are derived (schema.Derived): they are converted whatever
	// members the object has.
	derived []int32
	// In a Reference struct: kids indices of reference and type; -1 elsewhere.
	ref, refType int
	// root: the resource's fields (the table's columns), whose cols the root plan holds in its kids.
	root *schema.Resource
	mem  *arena
}

// newRootPlan returns the plan of res's table; the plans and cols of its fields are made on first use.
func newRootPlan(res *schema.Resource, mem *arena) *plan {
	p := &plan{node: res.Root, kind: res.Root.Kind, ref: -1, refType: -1, root: res, mem: mem,
		kids: make([]*plan, len(res.Fields))}
	if t := res.Root.Keys(); t != nil {
		p.keys = *t
	}
	for i, n := range res.Fields {
		if n.Derived != schema.NotDerived {
			p.derived = append(p.derived, int32(i))
		}
	}
	return p
}

// newPlan returns the plan of element n, bound to its col c. Its kids are made on first use.
func newPlan(n *schema.Node, key string, c *col) (*plan, error) {
	p := &plan{node: n, kind: n.Kind, scalar: n.Scalar, derive: n.Derived, repeated: n.Repeated, key: key, col: c,
		elem: c, ref: -1, refType: -1}
	if t := n.Keys(); t != nil {
		p.keys = *t
	}
	if n.Repeated {
		if c.kind != colList {
			return nil, fmt.Errorf("%s: column %s is not a list", n.Path(), c.typ)
		}
		p.elem = c.kids[0]
	}
	switch n.Kind {
	case schema.Struct, schema.Choice:
		if p.elem.kind != colStruct || len(p.elem.kids) != len(n.Children) {
			return nil, fmt.Errorf("%s: column %s does not match the schema's struct", n.Path(), p.elem.typ)
		}
		if n.Kind == schema.Choice && n.Repeated {
			return nil, fmt.Errorf("%s: repeated choice elements are not supported", n.Path())
		}
		p.kids = make([]*plan, len(n.Children))
		for i, ch := range n.Children {
			switch {
			case ch.Derived != schema.NotDerived:
				p.derived = append(p.derived, int32(i))
			case ch.Name == "reference" && n.FHIRType == "Reference":
				p.ref = i
			case ch.Name == "type" && n.FHIRType == "Reference":
				p.refType = i
			}
		}
	default:
		if !arrow.TypeEqual(p.elem.typ, n.Leaf()) {
			return nil, fmt.Errorf("%s: column type %s does not match schema type %s", n.Path(), p.elem.typ, n.Leaf())
		}
	}
	return p, nil
}

// kid returns the plan of child i, making it and its col on first use.
func (p *plan) kid(i int) (*plan, error) {
	if kp := p.kids[i]; kp != nil {
		return kp, nil
	}
	var (
		n   *schema.Node
		c   *col
		key string
		err error
	)
	if p.root != nil {
		n, key = p.root.Fields[i], p.root.Fields[i].Name
		c, err = newCol(p.root.Schema.Field(i).Type, p.mem)
	} else {
		n, key = p.node.Children[i], p.node.Children[i].Name
		if p.node.Kind == schema.Choice {
			key = p.key + strings.ToUpper(n.Name[:1]) + n.Name[1:]
		}
		c, err = p.elem.kid(i)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Path(), err)
	}
	kp, err := newPlan(n, key, c)
	if err != nil {
		return nil, err
	}
	p.kids[i] = kp
	return kp, nil
}

// release frees the cols of a root plan.
func (p *plan) release() {
	for _, kp := range p.kids {
		if kp != nil {
			kp.col.release()
		}
	}
}

// record returns the root plan's first rows entries as a record of schema s and starts a new batch.
func (p *plan) record(s *arrow.Schema, rows int, mem memory.Allocator) arrow.Record {
	z := &zeros{mem: mem}
	defer z.release()
	cols := make([]arrow.Array, len(p.kids))
	for i, kp := range p.kids {
		var c *col
		if kp != nil {
			c = kp.col
		}
		d := finishCol(c, s.Field(i).Type, rows, z)
		cols[i] = array.MakeFromData(d)
		d.Release()
	}
	rec := newFlushRecord(s, cols, int64(rows))
	for _, c := range cols {
		c.Release()
	}
	return rec
}

// materialised reports whether a root column holds entries past row rows.
func (p *plan) materialised(rows int) bool {
	for _, kp := range p.kids {
		if kp != nil && kp.col.materialised(rows) {
			return true
		}
	}
	return false
}

// found is a child of a struct being converted that its object has a member for, or a derived child. The kids of
// a struct are listed as its object's members come, then sorted into schema order, so that only the kids an
// object has cost anything; a slot per kid of the type, cleared for every object, cost 2% of a run.
type found struct {
	child  int32 // index in the plan's kids
	v      int32 // node index of the member's value; -1 for a derived child
	choice int32 // for a Choice child: which type
}

// converter converts lines; one per Worker.
type converter struct {
	tree              jtree
	isType            func([]byte) bool // whether a name is an R4 resource type
	refText, typeText []byte
	found             []found // a stack: per object being converted, the kids it converts, in schema order
	// path is where the value being converted is, one frame per element name: name[0].given is {name 0} {given
	// -1}. It is written out (pathText) only for a "_name" companion, which most lines have none of.
	path     []pathFrame
	pathText []byte
	pe       []byte // the _primitiveExtensions object being built
	compact  []byte
	b64      []byte
}

// shed lets go of the scratch buffers that hold more than limit bytes, and of the tree of the line before.
func (c *converter) shed(limit int) {
	t := &c.tree
	t.src, t.built = nil, false
	t.nodes, t.kids, t.stack, t.open, t.str = shedSlice(t.nodes, limit), shedSlice(t.kids, limit),
		shedSlice(t.stack, limit), shedSlice(t.open, limit), shedSlice(t.str, limit)
	c.refText, c.typeText, c.compact, c.b64 = shedSlice(c.refText, limit), shedSlice(c.typeText, limit),
		shedSlice(c.compact, limit), shedSlice(c.b64, limit)
	c.found, c.path, c.pathText, c.pe = shedSlice(c.found, limit), shedSlice(c.path, limit),
		shedSlice(c.pathText, limit), shedSlice(c.pe, limit)
}

// shedSlice returns nil when the array of s holds more than limit bytes, and s otherwise. Every scratch buffer
// shed is emptied when a line begins.
func shedSlice[T any](s []T, limit int) []T {
	var zero T
	if cap(s)*int(unsafe.Sizeof(zero)) > limit {
		return nil
	}
	return s
}

// convert appends the resource in line as row t.rows of t's columns and counts it, or appends nothing and fails:
// a line that fails half-way is rolled back, so the columns hold exactly what they held before it.
func (c *converter) convert(t *table, line []byte) error {
	p := t.plan
	var root int32
	if c.tree.holds(line) {
		c.tree.built = false // used once: the next line's tree replaces it
	} else {
		var err error
		if root, err = c.tree.parse(line); err != nil {
			return fmt.Errorf("parse %s: %w", p.node.Path(), err)
		}
	}
	if c.tree.nodes[root].kind != jObject {
		return fmt.Errorf("parse %s: not a JSON object", p.node.Path())
	}
	c.found, c.path, c.pe = c.found[:0], c.path[:0], c.pe[:0]
	if err := c.object(p, root, t.rows); err != nil {
		for _, kp := range p.kids {
			if kp != nil {
				kp.col.truncate(t.rows)
			}
		}
		return err
	}
	t.rows++
	return nil
}

// object converts the members of a JSON object into the children of struct plan p at entry index at (the caller
// marks the struct entry itself). Absent and null members append nothing: their cols pad them as nulls.
func (c *converter) object(p *plan, obj int32, at int) error {
	mark := len(c.found)
	err := c.members(p, obj, mark, at)
	c.found = c.found[:mark]
	return err
}

// members converts the members of object obj into the kids of p. Only the kids the object has a member for, and
// the derived ones, are visited, in schema order: the others pad themselves as nulls. They are listed in
// c.found from mark.
func (c *converter) members(p *plan, obj int32, mark, at int) error {
	members := c.tree.children(obj)
	for i := 0; i < len(members); i += 2 {
		key, err := c.tree.text(members[i])
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		m, ok := p.keys.Get(key)
		if !ok {
			if p.key != "" || string(key) != "resourceType" {
				return fmt.Errorf("%s: unexpected element %s", p.node.Path(), safeName(key))
			}
			continue // the root's resourceType: the table is the type
		}
		v := members[i+1]
		if m.Under {
			c.primitiveExtension(key[1:], v)
			continue
		}
		c.found = append(c.found, found{child: int32(m.Child), v: v, choice: int32(m.Choice)})
	}
	for _, d := range p.derived {
		c.found = append(c.found, found{child: d, v: -1})
	}
	list := c.found[mark:]
	for i := 1; i < len(list); i++ { // insertion sort, stable: members mostly come in schema order
		for j := i; j > 0 && list[j].child < list[j-1].child; j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
	var ref refParts
	for i, f := range list {
		if i+1 < len(list) && list[i+1].child == f.child {
			continue // a key given twice: the last one counts
		}
		kp, err := p.kid(int(f.child))
		if err != nil {
			return err
		}
		switch {
		case kp.derive != schema.NotDerived:
			c.derived(p, kp, list, at, &ref)
		case c.tree.nodes[f.v].kind == jNull:
		case kp.kind == schema.Choice:
			err = c.choice(kp, int(f.choice), f.v, at)
		default:
			mark := len(c.path)
			c.pushKey(kp.key)
			err = c.column(kp, f.v, at)
			c.path = c.path[:mark]
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// pathFrame is one element name of a path (converter.path, fastValidator.path), with the index of the array
// item within it (-1: none).
type pathFrame struct {
	key   string
	index int
}

// appendPath writes frames out after b: element names joined by dots, each with its array index in brackets.
func appendPath(b []byte, frames []pathFrame) []byte {
	for i, f := range frames {
		if i > 0 {
			b = append(b, '.')
		}
		b = append(b, f.key...)
		if f.index >= 0 {
			b = append(b, '[')
			b = strconv.AppendInt(b, int64(f.index), 10)
			b = append(b, ']')
		}
	}
	return b
}

func (c *converter) pushKey(key string) { c.path = append(c.path, pathFrame{key: key, index: -1}) }

// pathString writes the path out (appendPath).
func (c *converter) pathString() []byte {
	c.pathText = appendPath(c.pathText[:0], c.path)
	return c.pathText
}

func (c *converter) choice(p *plan, which int, v int32, at int) error {
	if which < 0 || which >= len(p.kids) {
		return fmt.Errorf("%s: choice type %d out of range", p.node.Path(), which)
	}
	kp, err := p.kid(which)
	if err != nil {
		return err
	}
	p.elem.setStruct(at)
	mark := len(c.path)
	c.pushKey(kp.key)
	err = c.column(kp, v, at)
	c.path = c.path[:mark]
	return err
}

// column converts the JSON value of one element at entry index at: a list when the node is repeated.
func (c *converter) column(p *plan, v int32, at int) error {
	if !p.repeated {
		return c.item(p, v, at)
	}
	if c.tree.nodes[v].kind != jArray {
		return fmt.Errorf("%s: expected a JSON array", p.node.Path())
	}
	start := p.col.beginList(at)
	f := &c.path[len(c.path)-1] // the list's own name, which its caller pushed
	items := c.tree.children(v)
	for i, e := range items {
		if c.tree.nodes[e].kind == jNull {
			continue // a null element: its entry stays unmaterialised, a null
		}
		f.index = i
		if err := c.item(p, e, start+i); err != nil {
			return err
		}
		f = &c.path[len(c.path)-1] // item may have grown the path, moving it
	}
	f.index = -1
	p.col.endList(at, start+len(items))
	return nil
}

// item converts one non-null element value at entry index at of p's element col.
func (c *converter) item(p *plan, v int32, at int) error {
	n := &c.tree.nodes[v]
	switch p.kind {
	case schema.Struct:
		if n.kind != jObject {
			return fmt.Errorf("%s: expected a JSON object", p.node.Path())
		}
		p.elem.setStruct(at)
		return c.object(p, v, at)
	case schema.JSON:
		c.compact = compactJSON(c.compact[:0], c.tree.raw(v))
		p.elem.appendBinary(at, c.compact)
		return nil
	case schema.Primitive:
		return c.primitive(p, v, at)
	}
	return fmt.Errorf("%s: cannot convert a %s element", p.node.Path(), p.node.Kind)
}

func (c *converter) primitive(p *plan, v int32, at int) error {
	n := &c.tree.nodes[v]
	switch p.scalar {
	case schema.String:
		if n.kind != jString {
			return fmt.Errorf("%s: expected a JSON string", p.node.Path())
		}
		s, err := c.tree.text(v)
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		p.elem.appendBinary(at, s)
	case schema.Bool:
		if n.kind != jTrue && n.kind != jFalse {
			return fmt.Errorf("%s: expected a JSON boolean", p.node.Path())
		}
		p.elem.appendBool(at, n.kind == jTrue)
	case schema.Int:
		if n.kind != jNumber {
			return fmt.Errorf("%s: expected a JSON number", p.node.Path())
		}
		i, err := parseInteger(c.tree.raw(v))
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		p.elem.appendFixed8(at, uint64(i))
	case schema.Float:
		if n.kind != jNumber {
			return fmt.Errorf("%s: expected a JSON number", p.node.Path())
		}
		f, err := parseDecimal(c.tree.raw(v))
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		p.elem.appendFixed8(at, math.Float64bits(f))
	case schema.Timestamp:
		if n.kind != jString {
			return fmt.Errorf("%s: expected a JSON string", p.node.Path())
		}
		s, err := c.tree.text(v)
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		ts, err := parseInstant(s)
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		p.elem.appendFixed8(at, uint64(ts))
	case schema.Binary:
		if n.kind != jString {
			return fmt.Errorf("%s: expected a JSON string", p.node.Path())
		}
		s, err := c.tree.text(v)
		if err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		if c.b64, err = decodeBase64(c.b64[:0], s); err != nil {
			return fmt.Errorf("%s: %w", p.node.Path(), err)
		}
		p.elem.appendBinary(at, c.b64)
	default:
		return fmt.Errorf("%s: unknown scalar kind %d", p.node.Path(), p.node.Scalar)
	}
	return nil
}

// primitiveExtension records the "_name" companion v of a primitive element at the current path: one entry per
// array item (skipping nulls) when v is an array, else one entry.
func (c *converter) primitiveExtension(name []byte, v int32) {
	mark := len(c.path)
	c.pushKey(string(name))
	if c.tree.nodes[v].kind == jArray {
		for i, e := range c.tree.children(v) {
			if c.tree.nodes[e].kind == jNull {
				continue
			}
			c.path[mark].index = i
			c.addPrimitiveExtension(e)
		}
	} else if c.tree.nodes[v].kind != jNull {
		c.addPrimitiveExtension(v)
	}
	c.path = c.path[:mark]
}

func (c *converter) addPrimitiveExtension(v int32) {
	if len(c.pe) == 0 {
		c.pe = append(c.pe, '{')
	} else {
		c.pe = append(c.pe, ',')
	}
	c.pe = strconv.AppendQuote(c.pe, string(c.pathString())) // element names, dots and indices: ASCII, JSON-safe
	c.pe = append(c.pe, ':')
	c.pe = compactJSON(c.pe, c.tree.raw(v))
}

// compactJSON appends src, a JSON value that has been parsed (so well-formed), to dst without the whitespace
// between its tokens: what json.Compact gives, without its scanner, which took 1.5% of a run. Exports write
// compact lines, so there is usually nothing to drop and src is copied in one piece.
func compactJSON(dst, src []byte) []byte {
	start := 0 // src[start:i] is yet to be copied
	for i := 0; i < len(src); i++ {
		switch src[i] {
		case '"':
			for i++; i < len(src) && src[i] != '"'; i++ {
				if src[i] == '\\' {
					i++
				}
			}
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}

// refParts is what a Reference's reference parses into, parsed once for its two derived columns.
type refParts struct {
	parsed  bool
	typ, id []byte
}

// derived appends a computed column of struct p, whose member slots start at base, at entry index at. A null
// appends nothing.
func (c *converter) derived(p, kp *plan, list []found, at int, ref *refParts) {
	switch kp.derive {
	case schema.PrimitiveExtensions:
		if len(c.pe) == 0 {
			return
		}
		c.pe = append(c.pe, '}')
		kp.elem.appendBinary(at, c.pe)
		c.pe = c.pe[:0]
		return
	case schema.ReferenceType, schema.ReferenceID:
		if !ref.parsed {
			var text, typ []byte
			if p.ref >= 0 {
				text = c.foundText(list, p.ref, &c.refText)
			}
			if p.refType >= 0 {
				typ = c.foundText(list, p.refType, &c.typeText)
			}
			ref.typ, ref.id = parseReference(text, typ, c.isType)
			ref.parsed = true
		}
		val := ref.typ
		if kp.derive == schema.ReferenceID {
			val = ref.id
		}
		if len(val) > 0 {
			kp.elem.appendBinary(at, val)
		}
	}
}

// foundText returns the text of the string given for kid child in list (the last one, as members converts), or
// nil; an escaped string is unescaped into *scratch, so that two can be held at once.
func (c *converter) foundText(list []found, child int, scratch *[]byte) []byte {
	v := int32(-1)
	for _, f := range list {
		if int(f.child) == child {
			v = f.v
		}
	}
	if v < 0 || c.tree.nodes[v].kind != jString {
		return nil
	}
	s, err := c.tree.text(v)
	if err != nil {
		return nil
	}
	if c.tree.nodes[v].escaped {
		*scratch = append((*scratch)[:0], s...)
		return *scratch
	}
	return s
}

// parseReference derives the resource type and logical id a Reference.reference points at, for joins:
// "Type/id", "Type/id/_history/v" and absolute URLs ending so give (Type, id) when Type is an R4 resource type;
// "urn:uuid:X" and "urn:oid:X" give id X and the Reference's type element; "#frag" gives id frag and no type.
// Anything else (conditional references, unknown types) gives "", "".
func parseReference(ref, typeElem []byte, isType func([]byte) bool) (typ, id []byte) {
	switch {
	case len(ref) == 0:
		return nil, nil
	case ref[0] == '#':
		return nil, ref[1:]
	case bytes.HasPrefix(ref, []byte("urn:uuid:")):
		return typeElem, ref[len("urn:uuid:"):]
	case bytes.HasPrefix(ref, []byte("urn:oid:")):
		return typeElem, ref[len("urn:oid:"):]
	}
	// One pass finds the last four slashes, and any query or fragment: the scans it replaces, forwards for '?'
	// and '#' and backwards for each slash, were 3% of a run.
	s1, s2, s3, s4 := -1, -1, -1, -1 // the last slash, the one before it, ...
	for i, c := range ref {
		switch c {
		case '/':
			s1, s2, s3, s4 = i, s1, s2, s3
		case '?', '#':
			return nil, nil // a conditional reference, or a fragment of another resource
		}
	}
	// Drop a trailing _history/v when at least Type/id comes before it.
	end := len(ref)
	if s3 >= 0 && string(ref[s2+1:s1]) == "_history" {
		end, s1, s2 = s2, s3, s4
	}
	if s1 < 0 || s1 == end-1 {
		return nil, nil
	}
	t := ref[s2+1 : s1]
	if !isType(t) {
		return nil, nil
	}
	return t, ref[s1+1 : end]
}

func parseInteger(raw []byte) (int64, error) {
	i, err := strconv.ParseInt(string(raw), 10, 64)
	if err == nil {
		return i, nil
	}
	// A JSON number such as 1.0 or 1e2 with an integral value.
	f, ferr := strconv.ParseFloat(string(raw), 64)
	if ferr != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, errors.New("invalid integer")
	}
	return int64(f), nil
}

// parseDecimal parses a FHIR decimal; one out of float64's range becomes ±Inf or 0 rather than failing.
func parseDecimal(raw []byte) (float64, error) {
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, errors.New("invalid decimal")
	}
	return f, nil
}

// parseInstant parses a FHIR instant (RFC 3339 with seconds and a zone) into UTC microseconds. A leap second
// (:60) is read as the first instant of the next minute.
func parseInstant(s []byte) (arrow.Timestamp, error) {
	t, err := time.Parse(time.RFC3339Nano, string(s))
	if err != nil && len(s) >= 19 && string(s[17:19]) == "60" {
		fixed := append([]byte(nil), s...)
		fixed[17], fixed[18] = '5', '9'
		t, err = time.Parse(time.RFC3339Nano, string(fixed))
		t = t.Add(time.Second)
	}
	if err != nil {
		return 0, errors.New("invalid instant")
	}
	return arrow.Timestamp(t.UnixMicro()), nil
}

// decodeBase64 decodes standard base64, ignoring whitespace (allowed by FHIR) and tolerating missing padding.
func decodeBase64(dst, s []byte) ([]byte, error) {
	if bytes.ContainsAny(s, " \t\r\n") {
		clean := make([]byte, 0, len(s))
		for _, b := range s {
			if b != ' ' && b != '\t' && b != '\r' && b != '\n' {
				clean = append(clean, b)
			}
		}
		s = clean
	}
	enc := base64.StdEncoding
	if len(s)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	n := enc.DecodedLen(len(s))
	if cap(dst) < n {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	m, err := enc.Decode(dst, s)
	if err != nil {
		return dst[:0], errors.New("invalid base64")
	}
	return dst[:m], nil
}

// safeName returns an unexpected JSON key for an error message when it looks like an element name, else a
// placeholder: keys come from the data and must not smuggle values into logs.
func safeName(key []byte) string {
	if len(key) == 0 || len(key) > 64 {
		return "(a JSON key)"
	}
	for _, b := range key {
		if !(b == '_' || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9')) {
			return "(a JSON key)"
		}
	}
	return string(key)
}
