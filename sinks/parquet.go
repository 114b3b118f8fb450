package sinks

import (
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/metadata"
	pqschema "github.com/apache/arrow/go/v17/parquet/schema"
	"gocloud.dev/blob"
)

// Defaults of ParquetOptions.
const (
	DefaultRowGroupRows  = 64 * 1024
	DefaultRowGroupBytes = 64 << 20
	DefaultMaxFileBytes  = 512 << 20
	// DefaultMaxColumnChunks is 3 row groups of ExplanationOfBenefit (2,641 leaf columns), 9 of Observation
	// (1,068): a few hundred bytes of metadata per chunk until the footer.
	DefaultMaxColumnChunks = 10000
)

// ParquetOptions shape the files of a Table. The zero value works: zstd, row groups of 64Ki rows or 64 MiB held,
// parts of 512 MiB, memory.DefaultAllocator, no budget shared with other tables.
type ParquetOptions struct {
	// Compression of every column. The zero value (compress.Codecs.Uncompressed) means zstd.
	Compression compress.Compression
	// RowGroupRows caps the rows of a row group.
	RowGroupRows int
	// RowGroupBytes ends a row group once what a part holds for it reaches this size. A row group is encoded as
	// records are written to it, and held until it ends as every column's compressed pages, the page being filled
	// and the dictionary; it is then written out column by column.
	RowGroupBytes int64
	// MaxFileBytes starts a new part file once the current one, with the row group it holds, reaches this size
	// (row groups are not split, so a part can exceed it by up to one row group).
	MaxFileBytes int64
	// MaxColumnChunks starts a new part once the current one holds this many column chunks (row groups times
	// leaf columns). The writer keeps the metadata of every chunk until it writes the footer, and a reader parses
	// all of it to open the file: for tables thousands of columns wide this, not the bytes, is what grows.
	MaxColumnChunks int
	// MaxOpenParts is how many row groups of the Table may be written at once, each into a part of its own (a
	// part is written by one goroutine at a time). Zero means 1: one part at a time. A run sets it to its
	// decoders, so that one large type uses every core for encoding too.
	MaxOpenParts int
	// Budget, when set, bounds what the row groups being built hold in all the Tables that share it: a Table
	// whose Write finds the budget exceeded writes out its row group early if it holds at least its share.
	Budget *MemoryBudget
	// Allocator for the writer's buffers.
	Allocator memory.Allocator
	// PartPrefix starts the name of every part file (zero: "part-"): a task of a run spread over several processes
	// writes "part-t0003-00000.parquet" so that it overwrites only its own parts. It must be one PartPrefixFor
	// returns, or RewrittenPartPrefix, so that RemoveStale knows the parts as ours.
	PartPrefix string
}

// MemoryBudget is the memory that a set of Tables may hold together, in two limits.
//
// The first is for the row groups they are building: their compressed pages, the pages being filled and the
// dictionaries. A row group being written out is no longer counted. When a Write finds this limit exceeded, it
// writes out the row group of its own part if its Table holds at least its share, and otherwise the row groups
// of the idle parts of the Table that holds the most, so that a Table that no longer gets rows does not keep its
// share.
//
// The second is for their layouts: the leaf paths of their schemas and the chunk writers' slots for them, which
// a Table keeps from its first Write on, rows or not. A run of a few types keeps a few MB of them (synthea-100's
// 19 types, 4 MB), but one of many keeps tens (r4-examples' 146 types have 100,774 leaves: 28 MB), and most of
// those types get no more rows: each is one object of a bulk export. When a Write finds this limit exceeded,
// other Tables write out their row groups and let go of their layouts' leaves (retire), until the layouts are
// back under the limit: first those whose layout holds the most more than their rows (retiree). A later Write to
// one builds them again.
//
// It is safe for concurrent use.
type MemoryBudget struct {
	limit int64 // of the row groups
	// heapTarget, when above 0, is the live heap over which the row groups give way (GiveWay); liveHeap reads
	// what the last collection found live.
	heapTarget int64
	liveHeap   func() int64
	layouts    int64        // of the layouts; 0: none
	held       atomic.Int64 // by the row groups
	laid       atomic.Int64 // by the layouts
	clock      atomic.Int64 // Writes begun, for Table.lastWrite

	mu      sync.Mutex
	members map[*Table]struct{} // tables holding rows
	laidOut map[*Table]struct{} // tables holding a layout
}

// NewMemoryBudget returns a budget of rowGroups bytes for the row groups and layouts bytes (0: no limit) for the
// layouts.
func NewMemoryBudget(rowGroups, layouts int64) *MemoryBudget {
	return &MemoryBudget{limit: rowGroups, layouts: layouts, members: map[*Table]struct{}{}, laidOut: map[*Table]struct{}{}}
}

// GiveWay makes the row groups give way to the rest of the process: while the last garbage collection found more
// than target bytes live, the row groups' limit is lowered by giveWayFactor times the excess, to no less than a
// quarter of it. The row groups can be written out at any time, where much of the rest of a run's memory (schemas,
// layouts, lines being read and validated) grows with the width of the types and the length of the lines it meets,
// and Go's soft memory limit would otherwise be the only bound left: a collector that has to keep under it runs
// back to back.
// Excess tells other holders of memory that can let go of it (pipeline's decoders) by how much. target 0 or less:
// never. Call it before the budget is shared.
func (b *MemoryBudget) GiveWay(target int64) {
	b.heapTarget, b.liveHeap = target, liveHeap
}

// Excess returns how many bytes more than the target of GiveWay the last collection found live: 0 when fewer, or
// without a target.
func (b *MemoryBudget) Excess() int64 {
	if b == nil || b.heapTarget <= 0 {
		return 0
	}
	return max(b.liveHeap()-b.heapTarget, 0)
}

// giveWayFactor is how many bytes the row groups' limit gives way by per byte of live heap over the target. The
// row groups are one holder among several, and what the others hold does not wait: with 1, r4-examples × 3 on
// two cores peaked at 239 to 269 MB (eight runs alternating with it), with 2 at 238 to 254, with 3 at 236 to
// 239, as fast; synthea-100 × 10 and × 40, whose live heap stays under the target, and r4-examples on one core
// peaked as before.
const giveWayFactor = 3

// rowGroupLimit returns the limit of the row groups now: limit, less giveWayFactor times what the live heap holds
// over the target.
func (b *MemoryBudget) rowGroupLimit() int64 {
	excess := b.Excess()
	if excess == 0 {
		return b.limit
	}
	return max(b.limit-giveWayFactor*excess, b.limit/4)
}

// liveHeap returns the heap bytes that the last garbage collection found live (0 before the first).
func liveHeap() int64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(min(s[0].Value.Uint64(), math.MaxInt64))
}

// over reports whether the row groups exceed their limit.
func (b *MemoryBudget) over() bool { return b.held.Load() > b.rowGroupLimit() }

// overLayouts reports whether the layouts exceed their limit.
func (b *MemoryBudget) overLayouts() bool { return b.layouts > 0 && b.laid.Load() > b.layouts }

// largest returns the table whose row groups hold the most, nil if none holds anything.
func (b *MemoryBudget) largest() *Table {
	b.mu.Lock()
	defer b.mu.Unlock()
	var best *Table
	var most int64
	for t := range b.members {
		if h := t.heldNow.Load(); h > most {
			best, most = t, h
		}
	}
	return best
}

// retiree returns the table, other than those passed over, whose layout holds the most more than its row groups
// do (nil if none holds a layout): a table whose rows have ended gives back its layout and cuts a small row group
// short, where one that is getting many rows (its row group large) would cut a large one. Of tables alike, the
// one written to least recently.
func (b *MemoryBudget) retiree(passed []*Table) *Table {
	b.mu.Lock()
	defer b.mu.Unlock()
	var best *Table
	var most, oldest int64
	for t := range b.laidOut {
		if slices.Contains(passed, t) {
			continue
		}
		gain, w := t.laidNow.Load()-t.heldNow.Load(), t.lastWrite.Load()
		if best == nil || gain > most || gain == most && w < oldest {
			best, most, oldest = t, gain, w
		}
	}
	return best
}

// Held returns the bytes the row groups hold now.
func (b *MemoryBudget) Held() int64 { return b.held.Load() }

// Laid returns the bytes the layouts hold now.
func (b *MemoryBudget) Laid() int64 { return b.laid.Load() }

// PartPrefixFor is the ParquetOptions.PartPrefix of task (zero: "part-t0000-") of a spread run, and with dedup of
// the parts a merge rewrites without the task's duplicates.
func PartPrefixFor(task int, dedup bool) string {
	if dedup {
		return fmt.Sprintf("part-t%04d-d-", task)
	}
	return fmt.Sprintf("part-t%04d-", task)
}

// TaskRewrittenPrefix is the PartPrefix of the parts a task writes again without the duplicates it could not tell
// in memory (pipeline's Options.DedupeKeys), before any merge: a merge that rewrites them writes PartPrefixFor's.
func TaskRewrittenPrefix(task int) string { return fmt.Sprintf("part-t%04d-u-", task) }

// RewrittenPartPrefix is the PartPrefix of the parts a run of one process writes again without the duplicates it
// could not tell in memory (pipeline's Options.DedupeKeys).
const RewrittenPartPrefix = "part-d-"

func (o ParquetOptions) withDefaults() ParquetOptions {
	if o.Compression == compress.Codecs.Uncompressed {
		o.Compression = compress.Codecs.Zstd
	}
	if o.RowGroupRows <= 0 {
		o.RowGroupRows = DefaultRowGroupRows
	}
	if o.RowGroupBytes <= 0 {
		o.RowGroupBytes = DefaultRowGroupBytes
	}
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = DefaultMaxFileBytes
	}
	if o.MaxColumnChunks <= 0 {
		o.MaxColumnChunks = DefaultMaxColumnChunks
	}
	if o.Allocator == nil {
		o.Allocator = memory.DefaultAllocator
	}
	if o.PartPrefix == "" {
		o.PartPrefix = "part-"
	}
	if o.MaxOpenParts <= 0 {
		o.MaxOpenParts = 1
	}
	return o
}

// Table writes the records of one resource type in one run to out/<Type>/part-00000.parquet, part-00001... The
// first part is opened when the first row group is written, so a type without rows leaves no object.
//
// Each part stores the Arrow schema (ARROW:schema) and the schema's key-value metadata (fhirlake.schema_version,
// fhir.version, fhir.resource_type) in the Parquet footer, so pqarrow and other Arrow readers get the Arrow types
// back. A part becomes visible only when it is complete: when it reaches MaxFileBytes or on Close. After any
// failure, and after Abort, the open parts are discarded and the Table only returns errors.
//
// Table is safe for concurrent use. A Write takes an open part no other Write is encoding into (up to
// MaxOpenParts of them) under a short lock, and encodes its rows into the part's row group without that lock, so
// other goroutines go on encoding into other parts meanwhile. The Write that completes a row group writes it out.
type Table struct {
	b      *blob.Bucket
	out    string
	typ    string
	schema *arrow.Schema
	opts   ParquetOptions

	mu    sync.Mutex
	freed *sync.Cond // broadcast when a part is handed back or closed, or the Table failed
	err   error      // first failure, or errAborted; sticky
	done  bool       // Close or Abort was called

	held      int64        // what the row groups of the open parts hold (chunkWriter.held), as of their last Write
	heldNow   atomic.Int64 // held, for MemoryBudget.largest
	laidNow   atomic.Int64 // what the layout holds (tableLayout.mem), for MemoryBudget.retiree
	lastWrite atomic.Int64 // the budget's clock when the last Write began, for MemoryBudget.retiree
	rowsIn    int64        // rows written so far
	layout    *tableLayout // built when a Write needs it, then read-only; dropped by Close, or by retire
	idle      []*part      // open parts no Write is encoding into
	open      int          // open parts, idle or taken
	next      int          // number of the next part
	files     []File       // committed parts
}

// tableLayout is the Parquet side of a Table's schema. Its leaves keep a descriptor of their own rather than the
// Parquet schema, whose tree of nodes, paths and name indices took about 1 KB per leaf column for as long as
// the Table was open (16.5 MB for the 16,693 leaf columns of synthea-100's 19 types): the footer of a part lists
// the schema's nodes again (parquetNodes).
type tableLayout struct {
	arrow *arrow.Schema
	props *parquet.WriterProperties
	// kv returns the footer's key-value metadata (keyValueMetadata), built once the first footer of the Table is
	// sized or written, and kept for the next: its serialized Arrow schema takes about 90 bytes per leaf, 9 MB over
	// r4-examples' tables, and serializing it took 4% of a two-core run over them.
	kv      func() metadata.KeyValueMetadata
	columns int        // leaf columns
	leaves  []leafPath // nil in a layout kept for the footers only (footerOnly)
	// mem is about what the layout and a part's chunk writer hold for as long as the Table keeps them, whether
	// or not they hold rows (layoutMem): the budget counts it, so that the Tables of a run of many types do not
	// keep theirs all, beyond it.
	mem int64
}

// part is one Parquet file being written.
type part struct {
	rel  string
	key  string         // the bucket key of the part file
	obj  *object        // nil until the first row group is written out (start)
	sink countingWriter // into obj
	meta partMeta       // what the footer needs of the row groups written
	rows int64
	cw   *chunkWriter // the row group being built
}

// NewTable prepares the table of resourceType, whose records all have schema s. Nothing is written until Write.
func NewTable(b *blob.Bucket, out string, resourceType string, s *arrow.Schema, opts ParquetOptions) *Table {
	usePooledZstd()
	opts = opts.withDefaults()
	t := &Table{
		b:      b,
		out:    out,
		typ:    resourceType,
		schema: s,
		opts:   opts,
	}
	t.freed = sync.NewCond(&t.mu)
	return t
}

// Write appends rec's rows. rec's schema must equal the table's. The Table keeps no reference to rec: its rows
// are encoded before Write returns.
func (t *Table) Write(ctx context.Context, rec arrow.Record) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.err != nil:
		return t.err
	case t.done:
		return fmt.Errorf("write %s table: %w", t.typ, ErrClosed)
	case !isTableName(t.typ):
		return fmt.Errorf("write table: %q is not a resource type or a table of ours", t.typ)
	case rec.Schema() != t.schema && !rec.Schema().Equal(t.schema): // the same schema, usually: skip the deep compare
		return fmt.Errorf("write %s table: record schema differs from the table schema", t.typ)
	case rec.Schema() != t.schema:
		// Equal, built again (schema.Registry keeps a schema only while it is held): the next record of its
		// writer is likely to be of this one, and the one the Table held may be let go of.
		t.schema = rec.Schema()
	}
	bu := t.opts.Budget
	if bu != nil {
		t.lastWrite.Store(bu.clock.Add(1))
	}
	for lo, n := 0, int(rec.NumRows()); lo < n; {
		if err := ctx.Err(); err != nil {
			err = fmt.Errorf("write %s table: %w", t.typ, err)
			t.fail(err)
			return err
		}
		p, err := t.take(ctx)
		if err != nil {
			return err
		}
		held := p.cw.held
		t.mu.Unlock()
		hi := lo + min(n-lo, t.opts.RowGroupRows-p.cw.rows)
		p.cw.add(rec, lo, hi)
		t.mu.Lock()
		t.rowsIn += int64(hi - lo)
		t.account(p.cw.held - held)
		if err := t.handBack(ctx, p); err != nil {
			return err
		}
		lo = hi
	}
	if bu != nil && (bu.over() || bu.overLayouts()) {
		t.mu.Unlock()
		relieve(ctx, bu, t)
		t.mu.Lock()
	}
	return t.err
}

// take returns an open part no Write is encoding into, opening one if fewer than MaxOpenParts are open and the
// Table has had a row group's worth of rows: every part repeats the schema and chunk metadata in its footer, so a
// small table waits for its one part rather than spreading over several. Called with mu held, which it releases
// while it opens a part.
func (t *Table) take(ctx context.Context) (*part, error) {
	for t.err == nil && len(t.idle) == 0 &&
		(t.open >= t.opts.MaxOpenParts || t.open > 0 && t.rowsIn < int64(t.opts.RowGroupRows)) {
		t.freed.Wait()
	}
	if t.err == nil {
		t.keepLayout()
	}
	if t.err != nil {
		return nil, t.err
	}
	if n := len(t.idle); n > 0 {
		p := t.idle[n-1]
		if p.cw == nil { // let go of by retire
			cw, err := newChunkWriter(t.layout)
			if err != nil {
				t.fail(fmt.Errorf("write %s table: parquet writer: %w", t.typ, err))
				return nil, t.err
			}
			p.cw = cw
		}
		t.idle = t.idle[:n-1]
		return p, nil
	}
	rel := fmt.Sprintf(partNameFormat, t.typ, t.opts.PartPrefix, t.next)
	t.next++
	t.open++
	t.mu.Unlock()
	p, err := t.openPart(rel)
	t.mu.Lock()
	if err == nil && t.err != nil { // failed (or aborted) elsewhere meanwhile
		p.discard()
		err = t.err
	}
	if err != nil {
		t.open--
		t.fail(err)
		t.freed.Broadcast()
		return nil, t.err
	}
	return p, nil
}

// keepLayout builds the Table's layout unless it has one with its leaves, and counts its memory. On failure the
// Table fails. Called with mu held.
func (t *Table) keepLayout() {
	if t.layout != nil && t.layout.leaves != nil {
		return
	}
	var l *tableLayout
	var err error
	if t.layout == nil {
		l, err = newTableLayout(t.schema, t.writerProps())
	} else {
		l = t.layout.footerOnly()
		err = l.addLeaves()
	}
	if err != nil {
		t.fail(fmt.Errorf("write %s table: %w", t.typ, err))
		return
	}
	t.layout = l
	t.laidNow.Store(l.mem)
	if bu := t.opts.Budget; bu != nil {
		bu.laid.Add(l.mem)
		bu.mu.Lock()
		bu.laidOut[t] = struct{}{}
		bu.mu.Unlock()
	}
}

// dropLeaves lets go of the layout's leaves, keeping what the footers need (footerOnly), and of the chunk
// writers of the idle parts, which hold no rows. Called with mu held.
func (t *Table) dropLeaves() {
	if t.layout == nil || t.layout.leaves == nil {
		return
	}
	for _, p := range t.idle {
		p.cw = nil
	}
	if bu := t.opts.Budget; bu != nil {
		bu.laid.Add(-t.layout.mem)
		bu.mu.Lock()
		delete(bu.laidOut, t)
		bu.mu.Unlock()
	}
	t.layout = t.layout.footerOnly()
	t.laidNow.Store(0)
}

// dropLayout lets go of the layout, for good. Called with mu held.
func (t *Table) dropLayout() {
	t.dropLeaves()
	t.layout = nil
}

// account adds delta to what the Table and its budget hold. Called with mu held.
func (t *Table) account(delta int64) {
	was := t.held
	t.held += delta
	t.heldNow.Store(t.held)
	if bu := t.opts.Budget; bu != nil {
		bu.held.Add(delta)
		switch {
		case was == 0 && t.held > 0:
			bu.mu.Lock()
			bu.members[t] = struct{}{}
			bu.mu.Unlock()
		case was > 0 && t.held == 0:
			bu.mu.Lock()
			delete(bu.members, t)
			bu.mu.Unlock()
		}
	}
}

// relieve brings the budget back under its limits; writer's Write calls it when it finds one exceeded. Row groups
// over their limit: the Table that holds the most writes out those of its idle parts. Layouts over theirs: Tables
// other than writer retire (retiree), until the layouts are under it or none can (a Table that another Write is
// encoding into cannot, and is passed over). Called without any Table's mu held.
func relieve(ctx context.Context, bu *MemoryBudget, writer *Table) {
	if bu.over() {
		if t := bu.largest(); t != nil {
			t.writeIdle(ctx)
		}
	}
	passed := []*Table{writer}
	for bu.overLayouts() {
		t := bu.retiree(passed)
		if t == nil {
			return
		}
		if !t.retire(ctx) {
			passed = append(passed, t)
		}
	}
}

// writeIdle writes out the row groups of the idle parts. A failure fails the Table, and is for its own Writes
// and Close to report.
func (t *Table) writeIdle(ctx context.Context) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writeOutIdle(ctx)
}

// writeOutIdle is writeIdle, called with mu held, which it releases while writing.
func (t *Table) writeOutIdle(ctx context.Context) {
	if t.err != nil || t.done {
		return
	}
	var ps []*part
	keep := t.idle[:0]
	for _, p := range t.idle {
		if p.hasRows() {
			ps = append(ps, p)
		} else {
			keep = append(keep, p)
		}
	}
	t.idle = keep
	for i, p := range ps {
		if err := t.flush(ctx, p, false); err != nil {
			for _, p := range ps[i+1:] {
				t.account(-p.cw.held)
				t.open--
				p.discard()
			}
			t.freed.Broadcast()
			return
		}
	}
}

// retire writes out the row groups of the parts and lets go of the layout's leaves and the chunk writers, unless
// a Write is encoding into a part, and reports whether it did. A later Write builds them again.
func (t *Table) retire(ctx context.Context) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil || t.done || t.layout == nil || t.layout.leaves == nil || len(t.idle) != t.open {
		return false
	}
	t.writeOutIdle(ctx)
	// A Write may have taken a part, or handed one back with rows, while mu was released.
	if t.err != nil || len(t.idle) != t.open || t.held != 0 {
		return false
	}
	t.dropLeaves()
	return true
}

// handBack returns p, which the caller took and encoded into, to the idle parts, after writing out its row group
// if that is complete, too large, or over the budget, and closing p if it is full. On failure p is discarded.
// Called with mu held, which it releases while writing.
func (t *Table) handBack(ctx context.Context, p *part) error {
	rows, held := p.cw.rows, p.cw.held
	fileFull := p.sink.n+held >= t.opts.MaxFileBytes
	if rows > 0 && (rows >= t.opts.RowGroupRows || held >= t.opts.RowGroupBytes || fileFull || t.overBudget()) {
		return t.flush(ctx, p, fileFull)
	}
	if t.err != nil {
		t.account(-held)
		t.open--
		p.discard()
		t.freed.Broadcast()
		return t.err
	}
	t.idle = append(t.idle, p)
	t.freed.Broadcast()
	return nil
}

// flush writes out the row group of p, which the caller took, closes p if it is full (or closePart says so), and
// hands p back. On failure p is discarded and the Table fails. Called with mu held, which it releases while
// writing.
func (t *Table) flush(ctx context.Context, p *part, closePart bool) error {
	t.account(-p.cw.held)
	t.mu.Unlock()
	closed, err := t.writeRowGroup(ctx, p, closePart)
	t.mu.Lock()
	switch {
	case err != nil: // p is gone: writeRowGroup discarded it
		t.open--
		t.fail(err)
	case closed != nil:
		t.open--
		t.files = append(t.files, *closed)
	case t.err != nil: // failed (or aborted) elsewhere while the row group was written
		t.open--
		p.discard()
	default:
		t.idle = append(t.idle, p)
	}
	t.freed.Broadcast()
	return t.err
}

// overBudget reports whether the shared budget's row groups exceed their limit and this table holds at least its
// share of them.
func (t *Table) overBudget() bool {
	bu := t.opts.Budget
	if bu == nil {
		return false
	}
	held := bu.held.Load()
	if held <= bu.rowGroupLimit() {
		return false
	}
	bu.mu.Lock()
	tables := int64(len(bu.members))
	bu.mu.Unlock()
	return t.held >= held/max(tables, 1)
}

// writeRowGroup writes the row group p has built, leaf column after leaf column, and closes p when it is full (or
// closePart says so), returning what was committed. On failure p is discarded. The caller has p to itself.
func (t *Table) writeRowGroup(ctx context.Context, p *part, closePart bool) (*File, error) {
	size := p.cw.held
	if closePart {
		size += p.cw.layout.footerBytes(1) // the only row group, when start opens the object
	}
	if err := t.start(ctx, p, size); err != nil {
		p.discard()
		return nil, err
	}
	stop := p.obj.watch(ctx)
	rows := p.cw.rows
	err := p.cw.writeRowGroup(&p.sink, &p.meta)
	if err == nil {
		err = p.sink.err
	}
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		p.discard()
		return nil, fmt.Errorf("write %s: %w", p.key, err)
	}
	p.rows += int64(rows)
	if closePart || p.sink.n >= t.opts.MaxFileBytes || len(p.meta.chunks)+len(p.cw.layout.leaves) > t.opts.MaxColumnChunks {
		f, err := t.closePart(ctx, p, p.cw.layout)
		if err != nil {
			return nil, err
		}
		return &f, nil
	}
	return nil, nil
}

func newTableLayout(s *arrow.Schema, props *parquet.WriterProperties) (*tableLayout, error) {
	l := &tableLayout{arrow: s, props: props}
	l.kv = sync.OnceValue(l.keyValueMetadata)
	if err := l.addLeaves(); err != nil {
		return nil, err
	}
	return l, nil
}

// addLeaves finds the leaves of l's schema (leafPaths), with what the writer properties say of each.
func (l *tableLayout) addLeaves() error {
	nodes, err := parquetNodes(l.arrow, l.props)
	if err != nil {
		return err
	}
	if l.leaves, err = leafPaths(l.arrow, nodes); err != nil {
		return fmt.Errorf("parquet schema: %w", err)
	}
	props := l.props
	lc := leafColumns(nodes)
	for i := range l.leaves {
		lp, n := &l.leaves[i], &nodes[lc.at[i]]
		path := dotted(lc.path(i))
		lp.node = leafNode{name: n.name, rep: n.rep, logical: n.logical, typeLen: -1, fieldID: n.fieldID}
		p, err := lp.node.primitive(lp.ptype) // as leafPath.descr makes it
		if err != nil {
			return fmt.Errorf("parquet schema: column %s: %w", path, err)
		}
		lp.node.sort = pqschema.NewColumn(p, lp.maxDef, lp.maxRep).SortOrder()
		lp.dict = lp.ptype != parquet.Types.Boolean && props.DictionaryEnabledFor(path)
		lp.maxStats = int32(props.MaxStatsSizeFor(path))
	}
	l.columns = len(l.leaves)
	l.mem = layoutMem(l.leaves)
	return nil
}

// footerOnly returns a layout with what the footer of a part of l needs, and without l's leaves.
func (l *tableLayout) footerOnly() *tableLayout {
	return &tableLayout{arrow: l.arrow, props: l.props, kv: l.kv, columns: l.columns}
}

// layoutMem is about the memory of a layout of leaves and of a chunk writer's slots for them: r4-examples' 146
// types have 100,774 leaves on 676,578 steps.
func layoutMem(leaves []leafPath) int64 {
	n := int64(cap(leaves)) * int64(unsafe.Sizeof(leafPath{})+unsafe.Sizeof(leafSlot{}))
	for i := range leaves {
		n += int64(cap(leaves[i].steps)) * int64(unsafe.Sizeof(step{}))
	}
	return n
}

// keyValueMetadata is the key-value metadata of a part's footer: the Arrow schema's, and the serialized Arrow
// schema that pqarrow's own writer stores, so that Arrow readers restore the exact types (timestamp zones, string
// rather than binary).
func (l *tableLayout) keyValueMetadata() metadata.KeyValueMetadata {
	s := l.arrow
	meta := make(metadata.KeyValueMetadata, 0, s.Metadata().Len()+1)
	for i, k := range s.Metadata().Keys() {
		meta.Append(k, s.Metadata().Values()[i])
	}
	meta.Append("ARROW:schema", base64.StdEncoding.EncodeToString(flight.SerializeSchema(s, l.props.Allocator())))
	return meta
}

// columnPath returns the path of leaf i, for an error message: it lists the Parquet schema's nodes to find it.
func (l *tableLayout) columnPath(i int) string {
	nodes, err := parquetNodes(l.arrow, l.props)
	if err != nil {
		return fmt.Sprintf("#%d", i)
	}
	lc := leafColumns(nodes)
	if i < 0 || i >= lc.len() {
		return fmt.Sprintf("#%d", i)
	}
	return dotted(lc.path(i))
}

// writerProps returns the Table's Parquet writer properties (compression, allocator).
func (t *Table) writerProps() *parquet.WriterProperties {
	return parquet.NewWriterProperties(
		parquet.WithCompression(t.opts.Compression),
		parquet.WithMaxRowGroupLength(int64(t.opts.RowGroupRows)),
		parquet.WithAllocator(t.opts.Allocator),
	)
}

// openPart readies the part file rel. Its object is opened when its first row group is written out (start).
func (t *Table) openPart(rel string) (*part, error) {
	cw, err := newChunkWriter(t.layout)
	if err != nil {
		return nil, fmt.Errorf("parquet writer: %w", err)
	}
	return &part{rel: rel, key: ObjectKey(t.out, rel), cw: cw}, nil
}

// start opens p's object, unless it is open, for a first write-out of about size bytes, and writes the leading
// magic. The object's upload buffer is fitted to that write-out (see uploadBufferFor), within the table's share
// (partUploadCap). On failure nothing is committed; the caller discards p.
func (t *Table) start(ctx context.Context, p *part, size int64) error {
	if p.obj != nil {
		return nil
	}
	buf := min(uploadBufferFor(size+int64(len(parquetMagic))), partUploadCap(t.opts.MaxOpenParts))
	obj, err := openObject(ctx, t.b, p.key, parquetType, buf)
	if err != nil {
		return err
	}
	p.obj, p.sink = obj, countingWriter{w: obj.w}
	p.sink.Write(parquetMagic)
	if err := p.sink.err; err != nil {
		return fmt.Errorf("start parquet file %s: %w", p.key, err)
	}
	return nil
}

// parquetMagic starts and ends a Parquet file.
var parquetMagic = []byte("PAR1")

// closePart writes the footer of p, with layout l, and commits it. On failure p is discarded.
func (t *Table) closePart(ctx context.Context, p *part, l *tableLayout) (File, error) {
	if err := t.start(ctx, p, l.footerBytes(0)); err != nil { // a part without a row group
		p.discard()
		return File{}, err
	}
	stop := p.obj.watch(ctx)
	err := writeFooter(l, p)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		p.discard()
		return File{}, fmt.Errorf("finish parquet file %s: %w", p.key, err)
	}
	if err := p.obj.commit(ctx); err != nil {
		return File{}, err
	}
	return File{Key: p.rel, Rows: p.rows, Bytes: p.sink.n}, nil
}

// fail makes err sticky and discards the idle parts; a part taken by a Write is discarded by that Write when it
// hands it back. Called with mu held.
func (t *Table) fail(err error) {
	if t.err == nil {
		t.err = err
	}
	for _, p := range t.idle {
		t.account(-p.held())
		p.discard()
	}
	t.open -= len(t.idle)
	t.idle = nil
	t.dropLayout() // a Write encoding into a part has the layout through the part's chunk writer
	t.freed.Broadcast()
}

// held is what p's row group holds: nothing when the Table let go of its chunk writer.
func (p *part) held() int64 {
	if p.cw == nil {
		return 0
	}
	return p.cw.held
}

// hasRows reports whether p's row group has rows: none when the Table let go of its chunk writer.
func (p *part) hasRows() bool { return p.cw != nil && p.cw.rows > 0 }

// discard cancels the part's object, if it was opened, so nothing of it is committed.
func (p *part) discard() {
	if p.obj != nil {
		p.obj.abort()
	}
}

// Held returns what the row groups of the table's open parts hold, as of their last Write: about the work its
// Close has left.
func (t *Table) Held() int64 { return t.heldNow.Load() }

// Close writes what is pending, commits the open part and returns every part written, in order. A Table that
// failed returns its error and commits nothing more. Close after Close returns the same files.
func (t *Table) Close(ctx context.Context) ([]File, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return nil, t.err
	}
	if !t.done {
		t.done = true
		for t.err == nil && len(t.idle) < t.open { // parts still taken by Writes
			t.freed.Wait()
		}
		if t.err != nil {
			return nil, t.err
		}
		err := ctx.Err()
		slices.SortFunc(t.idle, func(a, b *part) int { return strings.Compare(a.rel, b.rel) })
		for err == nil && len(t.idle) > 0 {
			p := t.idle[0]
			t.idle[0] = nil // the part is written out and dropped: its row group's memory goes now, not with the Table
			t.idle = t.idle[1:]
			t.open--
			t.account(-p.held())
			var f *File
			if p.hasRows() {
				f, err = t.writeRowGroup(ctx, p, true)
			} else {
				var ff File
				if ff, err = t.closePart(ctx, p, t.layout); err == nil {
					f = &ff
				}
			}
			if err == nil {
				t.files = append(t.files, *f)
			}
		}
		if err != nil {
			t.fail(err)
			return nil, t.err
		}
		// A closed Table keeps only its list of files: a run holds its Tables until every one is closed, and the
		// layouts of a run of many types (r4-examples' 138) were tens of MB.
		t.dropLayout()
		t.idle = nil
		slices.SortFunc(t.files, func(a, b File) int { return strings.Compare(a.Key, b.Key) })
	}
	return append([]File(nil), t.files...), nil
}

// Abort discards the open parts and the rows not yet written, without committing anything more; later calls
// return an error. Parts already committed (each complete) stay until RemoveStale; they are not published until a
// manifest lists them.
func (t *Table) Abort() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done = true
	t.fail(fmt.Errorf("%s table: %w", t.typ, errAborted))
}

// countingWriter is where a part is written. It counts bytes (the offsets of pages in the footer) and keeps the
// first write error instead of returning it, so that encoding goes on without checks and the Table checks err
// once per chunk. The Table commits the blob when the footer is complete.
type countingWriter struct {
	w   interface{ Write([]byte) (int, error) }
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err == nil {
		n, err := c.w.Write(p)
		c.n += int64(n)
		c.err = err
	}
	return len(p), nil
}
