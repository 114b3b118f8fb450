package transform

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/fhirlake/fhirlake/schema"
)

// Defaults of Options.
const (
	DefaultBatchRows  = 8192
	DefaultBatchBytes = 256 << 20
)

// Options tune a Worker. The zero value works.
type Options struct {
	// BatchRows is the number of pending rows of one type at which Full reports true; 0 means DefaultBatchRows.
	BatchRows int
	// BatchBytes is the Arrow memory held by the Worker's pending batches at which Full reports true; 0 means
	// DefaultBatchBytes. Wide types hold much more than their JSON: a StructureDefinition row takes about 7
	// times its JSON size (every choice type of every ElementDefinition is a column), so rows alone do not
	// bound memory.
	BatchBytes int64
	// Allocator backs the record builders; nil means Go memory that is reused once the records are released
	// (the caller must then keep nothing of a record's memory after releasing it).
	Allocator memory.Allocator
	// Validator chooses the validation path: ValidatorReference ("" too) validates every line with google/fhir/go
	// jsonformat; ValidatorFast checks each line in one pass over its bytes against a plan compiled from the same
	// descriptors and hands the lines it cannot vouch for (nearly every invalid line among them) to the reference
	// path, so verdicts and issues are the reference's. The one kind of invalid line it answers for itself, with
	// the reference's issues, is one whose only fault is absent required elements (fastValidator.explain).
	Validator string
}

// Validation paths of Options.Validator.
const (
	ValidatorReference = "reference"
	ValidatorFast      = "fast"
)

// Result is the outcome of one line. Valid lines have been appended as one row of their type's batch.
type Result struct {
	ResourceType string
	Known        bool
	ID           string
	Version      string // meta.versionId, else meta.lastUpdated, else "" (see Verdict.Version)
	Valid        bool
	Issues       []Issue
	// ByReference is set when the verdict is the reference path's: every line's with ValidatorReference, and with
	// ValidatorFast those of the lines the fast validator handed on, the invalid ones and the valid ones in a
	// shape it does not model (null values, escaped keys ...), which convert at the reference's speed.
	ByReference bool
}

// Worker validates lines and converts the valid ones into per-type Arrow record batches. It is not safe for
// concurrent use: run one per goroutine.
type Worker struct {
	reg   *schema.Registry
	opts  Options
	alloc *countingAllocator
	val   *Validator
	fast  *fastValidator // nil on the reference path
	// fastHits and fallbacks count the lines the fast validator gave the verdict of (valid, or lacking required
	// elements) and those it handed on.
	fastHits, fallbacks int64
	conv                converter
	// grown is set after a line of more than shedAfterBytes: the scratch buffers it grew past keepScratchBytes
	// are let go before the next line that is not as long (shed).
	grown  bool
	tables map[string]*table
	// appends counts the rows appended: the clock of table.last.
	appends int64
}

// table is the pending batch of one resource type.
type table struct {
	res    *schema.Resource
	plan   *plan
	mem    *arena // the batch's memory, from the Worker's allocator
	rows   int
	last   int64 // Worker.appends at the type's last row
	broken error // set when a failed row was not rolled back: the columns may be misaligned
}

// NewWorker returns a Worker converting into the schemas of reg.
func NewWorker(reg *schema.Registry, opts Options) (*Worker, error) {
	if reg == nil {
		return nil, errors.New("new worker: nil schema registry")
	}
	if opts.BatchRows == 0 {
		opts.BatchRows = DefaultBatchRows
	}
	if opts.BatchRows < 0 {
		return nil, fmt.Errorf("new worker: BatchRows %d is negative", opts.BatchRows)
	}
	if opts.BatchBytes == 0 {
		opts.BatchBytes = DefaultBatchBytes
	}
	if opts.BatchBytes < 0 {
		return nil, fmt.Errorf("new worker: BatchBytes %d is negative", opts.BatchBytes)
	}
	if opts.Allocator == nil {
		opts.Allocator = goRecycler
	}
	v, err := NewValidator()
	if err != nil {
		return nil, fmt.Errorf("new worker: %w", err)
	}
	alloc := &countingAllocator{Allocator: opts.Allocator}
	w := &Worker{reg: reg, opts: opts, alloc: alloc, val: v, tables: make(map[string]*table)}
	switch opts.Validator {
	case "", ValidatorReference:
	case ValidatorFast:
		if w.fast, err = newFastValidator(); err != nil {
			return nil, fmt.Errorf("new worker: %w", err)
		}
		w.fast.tree = &w.conv.tree
	default:
		return nil, fmt.Errorf("new worker: unknown validator %q (want %s or %s)", opts.Validator, ValidatorReference, ValidatorFast)
	}
	w.conv.isType = typeSet(reg)
	return w, nil
}

// Process validates one line and, when it is a valid resource, appends it as one row of its type's batch.
// An invalid line is an outcome (Result.Valid false, with Issues), not an error. The error is for internal
// failures only (a validated resource that does not fit its schema, an Arrow failure) and should stop the run;
// it names the resource type and element path, never a value.
//
// Process is Validate followed, for a valid line, by Append.
func (w *Worker) Process(line []byte) (Result, error) {
	r := w.Validate(line)
	if !r.Valid {
		return r, nil
	}
	return r, w.Append(line, r)
}

// Validate validates one line without converting it. A caller that decides per line whether to keep a valid
// resource (pipeline skips duplicates) calls Validate and then Append for the lines it keeps.
func (w *Worker) Validate(line []byte) Result {
	if w.grown && len(line) <= shedAfterBytes {
		w.shed()
	}
	w.grown = len(line) > shedAfterBytes
	if w.fast != nil {
		vd, ok := w.fast.validate(line)
		if !ok {
			vd, ok = w.fast.explain(line)
		}
		if ok {
			w.fastHits++
			return Result{ResourceType: vd.ResourceType, Known: vd.Known, ID: vd.ID, Version: vd.Version,
				Valid: len(vd.Issues) == 0, Issues: vd.Issues}
		}
		w.fallbacks++
	}
	vd := w.val.Validate(line)
	return Result{ResourceType: vd.ResourceType, Known: vd.Known, ID: vd.ID, Version: vd.Version,
		Valid: len(vd.Issues) == 0, Issues: vd.Issues, ByReference: true}
}

// A Worker's scratch buffers (the tree of a line, at 20 bytes a token, unescaped strings, decoded base64) grow to
// fit the longest line it has met, and most exports have a few lines of MBs among many of KBs: r4-examples' 2.75
// MB ImplementationGuide left each of two decoders holding about 7 MB for the rest of the run. So after a line of
// more than shedAfterBytes, the next line that is not as long finds no scratch buffer of more than
// keepScratchBytes (a line of up to shedAfterBytes needs less than that of each).
const (
	shedAfterBytes   = 64 << 10
	keepScratchBytes = 1 << 20
)

// shed lets go of the scratch buffers that hold more than keepScratchBytes, for the collector to take.
func (w *Worker) shed() {
	w.conv.shed(keepScratchBytes)
	if w.fast != nil {
		w.fast.shed(keepScratchBytes)
	}
}

// Append converts line, which Validate found valid with result r, into one row of r.ResourceType's batch. Its
// errors are Process's internal failures.
func (w *Worker) Append(line []byte, r Result) error {
	if !r.Valid {
		return fmt.Errorf("convert %s: the line is not valid", r.ResourceType)
	}
	t, err := w.table(r.ResourceType)
	if err != nil {
		return err
	}
	if t.broken != nil {
		return t.broken
	}
	w.appends++
	t.last = w.appends
	if err := w.conv.convert(t, line); err != nil {
		err = fmt.Errorf("convert %s: %w", r.ResourceType, err)
		if t.rowsMisaligned() {
			t.broken = err
		}
		return err
	}
	return nil
}

func (w *Worker) table(typ string) (*table, error) {
	if t, ok := w.tables[typ]; ok {
		return t, nil
	}
	res, err := w.reg.Build(typ)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", typ, err)
	}
	mem := &arena{mem: w.alloc}
	t := &table{res: res, plan: newRootPlan(res, mem), mem: mem}
	w.tables[typ] = t
	return t, nil
}

// rowsMisaligned reports whether a column holds values past the table's rows: a row that failed half-way.
func (t *table) rowsMisaligned() bool { return t.plan.materialised(t.rows) }

// record returns the pending rows as a record and starts a new batch.
func (t *table) record(mem memory.Allocator) arrow.Record {
	rec := t.plan.record(t.res.Schema, t.rows, mem)
	t.rows = 0
	return rec
}

// ValidatorStats returns how many lines the fast validator gave the verdict of on its own (valid lines, and
// lines whose one fault is absent required elements) and how many it handed to the reference path; both are 0 on
// the reference path.
func (w *Worker) ValidatorStats() (fast, reference int64) { return w.fastHits, w.fallbacks }

// Full reports whether some type has at least Options.BatchRows pending rows, or the pending batches hold at
// least Options.BatchBytes of Arrow memory (records already flushed, wherever they are held, do not count). A
// caller then flushes: Flush(Options.BatchRows) for the full types, or, when memory is the reason,
// FlushLargest, which keeps the small types growing, or Flush(0), which bounds memory best.
func (w *Worker) Full() bool {
	if w.PendingBytes() >= w.opts.BatchBytes {
		return true
	}
	for _, t := range w.tables {
		if t.rows >= w.opts.BatchRows {
			return true
		}
	}
	return false
}

// Bytes returns the Arrow memory allocated through the Worker and not yet freed: its pending batches plus the
// flushed records that have not been released yet.
func (w *Worker) Bytes() int64 { return w.alloc.n.Load() }

// PendingBytes returns the Arrow memory the pending batches hold (what Options.BatchBytes bounds).
func (w *Worker) PendingBytes() int64 {
	var n int64
	for _, t := range w.tables {
		n += t.mem.held
	}
	return n
}

// Pending returns the number of rows appended and not yet flushed, over all types.
func (w *Worker) Pending() int {
	n := 0
	for _, t := range w.tables {
		n += t.rows
	}
	return n
}

// Flush returns one record per resource type with at least minRows pending rows (minRows <= 0: every type with
// a pending row), in type order, and starts new batches for them. Each record's schema is the registry's schema
// of its type. The caller releases the records.
func (w *Worker) Flush(minRows int) ([]arrow.Record, error) {
	return w.flush(w.PendingTypes(minRows))
}

// PendingTypes returns the types Flush(minRows) flushes, in type order.
func (w *Worker) PendingTypes(minRows int) []string {
	minRows = max(minRows, 1)
	types := make([]string, 0, len(w.tables))
	for typ, t := range w.tables {
		if t.rows >= minRows {
			types = append(types, typ)
		}
	}
	slices.Sort(types)
	return types
}

// FlushLargest returns records, as Flush does, for the types whose pending batches hold the most memory, the
// largest first, until the batches left pending hold at most keep bytes. The types it leaves keep growing
// into bigger records: flushing every type whenever the batches of a large one fill memory cuts the small ones
// into many small records, each as wide as its type, and the Parquet writer pays per record for every column.
func (w *Worker) FlushLargest(keep int64) ([]arrow.Record, error) {
	return w.flush(w.LargestTypes(keep))
}

// LargestTypes returns the types FlushLargest(keep) flushes, in type order.
func (w *Worker) LargestTypes(keep int64) []string {
	held := w.PendingBytes()
	var types []string
	for typ, t := range w.tables {
		if t.rows > 0 {
			types = append(types, typ)
		}
	}
	slices.SortFunc(types, func(a, b string) int {
		return cmp.Or(cmp.Compare(w.tables[b].mem.held, w.tables[a].mem.held), cmp.Compare(a, b))
	})
	n := 0
	for n < len(types) && held > keep {
		held -= w.tables[types[n]].mem.held
		n++
	}
	types = types[:n]
	slices.Sort(types)
	return types
}

// flush returns one record for each of types, in type order.
func (w *Worker) flush(types []string) ([]arrow.Record, error) {
	recs := make([]arrow.Record, 0, len(types))
	for _, typ := range types {
		rec, err := w.FlushType(typ)
		if err != nil {
			for _, r := range recs {
				r.Release()
			}
			return nil, err
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// FlushType returns the record of typ's pending rows (none when typ has no pending row: an empty record), and
// starts a new batch for it. Flushing one type at a time, each record written before the next is made, keeps one
// record's arrays alive rather than those of every type a Worker holds: a run of many types flushes them all at
// its end. The caller releases the record.
func (w *Worker) FlushType(typ string) (arrow.Record, error) {
	t, ok := w.tables[typ]
	if !ok {
		return nil, fmt.Errorf("flush %s: no batch of that type", typ)
	}
	if t.broken != nil || t.rowsMisaligned() {
		return nil, fmt.Errorf("flush %s: columns do not hold %d rows", typ, t.rows)
	}
	return t.record(w.alloc), nil
}

// RetireIdle lets go of what the Worker holds for the types that have no pending row and have had none in its last
// idle rows: their plans and columns, and its hold on their schemas, which the Registry keeps only while someone
// holds them. A later line of such a type builds them again. It returns the types retired, in type order.
//
// A Worker otherwise keeps them for every type it has met, and a run of many types, such as a bulk export read one
// type after the other, does not meet most of them again: r4-examples' 146 types hold 18 MB of schemas, and each
// decoder its plans and columns for them. A type with pending rows is kept: writing them out early would cut it
// into small records, each of which the Parquet writer pays for per column, and the table of each would hold its
// layout (sinks.MemoryBudget) where a few pending rows hold little.
func (w *Worker) RetireIdle(idle int64) []string {
	var retired []string
	for typ, t := range w.tables {
		if t.rows == 0 && w.appends-t.last >= idle {
			t.plan.release()
			delete(w.tables, typ)
			retired = append(retired, typ)
		}
	}
	slices.Sort(retired)
	return retired
}

// Release frees the pending batches. The Worker must not be used afterwards.
func (w *Worker) Release() {
	for typ, t := range w.tables {
		t.plan.release()
		delete(w.tables, typ)
	}
}

// typeSet returns whether a name is a resource type of reg, without allocating.
func typeSet(reg *schema.Registry) func([]byte) bool {
	var types schema.KeyTable[struct{}] // looked up for every Reference converted
	for _, t := range reg.Types() {
		types.Put(t, struct{}{})
	}
	return func(name []byte) bool {
		_, ok := types.Get(name)
		return ok
	}
}

// countingAllocator counts the bytes held through it. Records flushed by a Worker may be released on other
// goroutines, hence the atomic.
type countingAllocator struct {
	memory.Allocator
	n atomic.Int64
}

func (a *countingAllocator) Allocate(size int) []byte {
	a.n.Add(int64(size))
	return a.Allocator.Allocate(size)
}

func (a *countingAllocator) Reallocate(size int, b []byte) []byte {
	a.n.Add(int64(size - len(b)))
	return a.Allocator.Reallocate(size, b)
}

func (a *countingAllocator) Free(b []byte) {
	a.n.Add(-int64(len(b)))
	a.Allocator.Free(b)
}
