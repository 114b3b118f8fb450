package sinks

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/flight"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/metadata"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
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

// ParquetOptions shape the files of a Table. The zero value works: zstd, row groups of 64Ki rows or 64 MiB of
// Arrow data, parts of 512 MiB, memory.DefaultAllocator, no budget shared with other tables.
type ParquetOptions struct {
	// Compression of every column. The zero value (compress.Codecs.Uncompressed) means zstd.
	Compression compress.Compression
	// RowGroupRows caps the rows of a row group.
	RowGroupRows int
	// RowGroupBytes ends a row group once the Arrow data a Table holds for it reaches this size. A row group is
	// held as the record batches written to it until it ends, then written out column by column, so this bounds
	// what a Table gathers; up to MaxOpenParts more row groups are held while they are written.
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
	// Budget, when set, bounds the Arrow data held by all the Tables that share it: a Table whose Write finds the
	// budget exceeded writes out its row group early if it holds at least its share.
	Budget *MemoryBudget
	// Allocator for the writer's buffers.
	Allocator memory.Allocator
	// PartPrefix starts the name of every part file (zero: "part-"): a task of a run spread over several processes
	// writes "part-t0003-00000.parquet" so that it overwrites only its own parts. It must be one PartPrefixFor
	// returns, so that RemoveStale knows the parts as ours.
	PartPrefix string
}

// MemoryBudget is the Arrow memory that a set of Tables may hold in the row groups they are gathering, together.
// A row group being written is no longer counted, so the memory of a set of Tables is bounded by the budget plus
// the row groups being written: at most MaxOpenParts per Table. It is safe for concurrent use.
type MemoryBudget struct {
	limit  int64
	held   atomic.Int64
	tables atomic.Int64 // tables holding rows
}

// NewMemoryBudget returns a budget of limit bytes.
func NewMemoryBudget(limit int64) *MemoryBudget { return &MemoryBudget{limit: limit} }

// Held returns the bytes held now.
func (b *MemoryBudget) Held() int64 { return b.held.Load() }

// PartPrefixFor is the ParquetOptions.PartPrefix of task (zero: "part-t0000-") of a spread run, and with dedup of
// the parts a merge rewrites without the task's duplicates.
func PartPrefixFor(task int, dedup bool) string {
	if dedup {
		return fmt.Sprintf("part-t%04d-d-", task)
	}
	return fmt.Sprintf("part-t%04d-", task)
}

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
// Table is safe for concurrent use. Writes gather rows under a short lock; the Write that completes a row group
// encodes it without holding that lock, into an open part no other row group is being written to (up to
// MaxOpenParts of them), so other goroutines go on gathering and encoding meanwhile.
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

	// The row group being gathered: records written and not yet cut into a group; the first pendingOff rows of
	// pending[0] went into the previous group.
	pending      []pendingRecord
	pendingOff   int
	pendingRows  int
	pendingBytes int64
	partBytes    int64 // size of the part last handed back

	layout *tableLayout // built with the first row group, then read-only
	idle   []*part      // open parts no row group is being written to
	open   int          // open parts, idle or being written to
	next   int          // number of the next part
	files  []File       // committed parts
}

type pendingRecord struct {
	rec   arrow.Record
	bytes int64 // arrowBytes(rec)
}

// group is a row group cut from the pending records, to be written.
type group struct {
	segs      []segment
	rows      int
	closePart bool // the part is full: close it after this group
}

// segment is rows [lo, hi) of a record; the group holds a reference to rec.
type segment struct {
	rec    arrow.Record
	lo, hi int
}

// tableLayout is the Parquet side of a Table's schema.
type tableLayout struct {
	schema *pqschema.Schema
	props  *parquet.WriterProperties
	meta   metadata.KeyValueMetadata
	leaves []leafPath
}

// part is one Parquet file being written.
type part struct {
	rel    string
	obj    *object
	sink   *countingWriter
	meta   *metadata.FileMetaDataBuilder // of the row groups written
	rows   int64
	groups int
	chunks int          // column chunks written: row groups times leaf columns
	cw     *chunkWriter // encodes the chunk being written
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

// Write appends rec's rows. rec's schema must equal the table's; the Table keeps a reference to rec until its
// rows are written out, and the caller keeps its own.
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
	case !rec.Schema().Equal(t.schema):
		return fmt.Errorf("write %s table: record schema differs from the table schema", t.typ)
	case rec.NumRows() == 0:
		return nil
	}
	if err := ctx.Err(); err != nil {
		err = fmt.Errorf("write %s table: %w", t.typ, err)
		t.fail(err)
		return err
	}
	return t.writeGroups(ctx, t.gather(rec))
}

// gather adds rec to the pending rows and cuts the row groups that are complete. Called with mu held.
func (t *Table) gather(rec arrow.Record) []*group {
	rec.Retain()
	n := arrowBytes(rec)
	t.pending = append(t.pending, pendingRecord{rec, n})
	if t.pendingRows == 0 && t.opts.Budget != nil {
		t.opts.Budget.tables.Add(1)
	}
	t.pendingRows += int(rec.NumRows())
	t.pendingBytes += n
	if t.opts.Budget != nil {
		t.opts.Budget.held.Add(n)
	}
	var gs []*group
	for t.pendingRows >= t.opts.RowGroupRows {
		gs = append(gs, t.cut(t.opts.RowGroupRows, false))
	}
	if t.pendingRows > 0 {
		fileFull := t.partBytes+t.pendingBytes >= t.opts.MaxFileBytes
		if fileFull || t.pendingBytes >= t.opts.RowGroupBytes || t.overBudget() {
			gs = append(gs, t.cut(t.pendingRows, fileFull))
		}
	}
	return gs
}

// overBudget reports whether the shared budget is exceeded and this table holds at least its share of it.
func (t *Table) overBudget() bool {
	bu := t.opts.Budget
	if bu == nil {
		return false
	}
	held := bu.held.Load()
	return held > bu.limit && t.pendingBytes >= held/max(bu.tables.Load(), 1)
}

// cut takes the first rows pending rows as the next row group. Called with mu held.
func (t *Table) cut(rows int, closePart bool) *group {
	g := &group{rows: rows, closePart: closePart}
	for rows > 0 {
		pr := t.pending[0]
		left := int(pr.rec.NumRows()) - t.pendingOff
		take := min(left, rows)
		if take < left {
			pr.rec.Retain()
			g.segs = append(g.segs, segment{pr.rec, t.pendingOff, t.pendingOff + take})
			t.pendingOff += take
		} else {
			g.segs = append(g.segs, segment{pr.rec, t.pendingOff, t.pendingOff + take}) // the group takes our reference
			t.pendingBytes -= pr.bytes
			if t.opts.Budget != nil {
				t.opts.Budget.held.Add(-pr.bytes)
			}
			t.pending[0] = pendingRecord{}
			t.pending = t.pending[1:]
			t.pendingOff = 0
		}
		rows -= take
		t.pendingRows -= take
	}
	if t.pendingRows == 0 && t.opts.Budget != nil {
		t.opts.Budget.tables.Add(-1)
	}
	return g
}

// release drops the group's references.
func (t *Table) release(g *group) {
	for _, s := range g.segs {
		s.rec.Release()
	}
	g.segs = nil
}

// writeGroups writes each of gs into an open part no other group is being written to, opening one if fewer
// than MaxOpenParts are open. Called with mu held, which it releases while encoding.
func (t *Table) writeGroups(ctx context.Context, gs []*group) error {
	for i, g := range gs {
		for t.err == nil && len(t.idle) == 0 && t.open >= t.opts.MaxOpenParts {
			t.freed.Wait()
		}
		if t.err == nil && t.layout == nil {
			l, err := newTableLayout(t.schema, t.writerProps())
			if err != nil {
				t.fail(fmt.Errorf("write %s table: %w", t.typ, err))
			}
			t.layout = l
		}
		if t.err != nil {
			for _, g := range gs[i:] {
				t.release(g)
			}
			return t.err
		}
		var p *part
		var rel string
		if n := len(t.idle); n > 0 {
			p, t.idle = t.idle[n-1], t.idle[:n-1]
		} else {
			rel = fmt.Sprintf(partNameFormat, t.typ, t.opts.PartPrefix, t.next)
			t.next++
			t.open++
		}
		t.mu.Unlock()
		var closed *File
		var err error
		if p == nil {
			p, err = t.openPart(ctx, rel)
		}
		if err == nil {
			closed, err = t.writeGroup(ctx, p, g)
		}
		t.mu.Lock()
		t.release(g)
		switch {
		case err != nil: // p is gone: writeGroup or openPart discarded it
			t.open--
			t.fail(err)
		case closed != nil:
			t.open--
			t.files = append(t.files, *closed)
		case t.err != nil: // failed (or aborted) elsewhere while this group was written
			t.open--
			p.discard()
		default:
			t.idle = append(t.idle, p)
			t.partBytes = p.sink.n
		}
		t.freed.Broadcast()
		if t.err != nil {
			for _, g := range gs[i+1:] {
				t.release(g)
			}
			return t.err
		}
	}
	return nil
}

// writeGroup writes g as one row group of p, leaf column after leaf column, and closes p when it is full,
// returning what was committed. On failure p is discarded. The caller has p to itself.
func (t *Table) writeGroup(ctx context.Context, p *part, g *group) (*File, error) {
	stop := p.obj.watch(ctx)
	err := t.encodeRowGroup(p, g)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		p.discard()
		return nil, fmt.Errorf("write %s: %w", p.obj.key, err)
	}
	p.rows += int64(g.rows)
	p.chunks += len(t.layout.leaves)
	if g.closePart || p.sink.n >= t.opts.MaxFileBytes || p.chunks+len(t.layout.leaves) > t.opts.MaxColumnChunks {
		f, err := t.closePart(ctx, p)
		if err != nil {
			return nil, err
		}
		return &f, nil
	}
	return nil, nil
}

func (t *Table) encodeRowGroup(p *part, g *group) error {
	rg := p.meta.AppendRowGroup()
	rg.SetNumRows(g.rows)
	var total int64
	for i := range t.layout.leaves {
		cc := rg.NextColumnChunk()
		p.cw.encode(&t.layout.leaves[i], cc.Descr(), g)
		n, err := p.cw.finish(p.sink, cc)
		if err != nil {
			return fmt.Errorf("column %s: %w", cc.Descr().Path(), err)
		}
		total += n
	}
	p.cw.endRowGroup()
	if err := rg.Finish(total, int16(p.groups)); err != nil {
		return err
	}
	p.groups++
	return p.sink.err
}

// releasePending releases every record gathered and not cut into a group. Called with mu held.
func (t *Table) releasePending() {
	for _, pr := range t.pending {
		pr.rec.Release()
		if t.opts.Budget != nil {
			t.opts.Budget.held.Add(-pr.bytes)
		}
	}
	if t.pendingRows > 0 && t.opts.Budget != nil {
		t.opts.Budget.tables.Add(-1)
	}
	t.pending, t.pendingOff, t.pendingRows, t.pendingBytes = nil, 0, 0, 0
}

func newTableLayout(s *arrow.Schema, props *parquet.WriterProperties) (*tableLayout, error) {
	ps, err := pqarrow.ToParquet(s, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		return nil, fmt.Errorf("parquet schema: %w", err)
	}
	leaves, err := leafPaths(s, ps)
	if err != nil {
		return nil, fmt.Errorf("parquet schema: %w", err)
	}
	meta := make(metadata.KeyValueMetadata, 0, s.Metadata().Len()+1)
	for i, k := range s.Metadata().Keys() {
		meta.Append(k, s.Metadata().Values()[i])
	}
	// What pqarrow's own writer stores, so that Arrow readers restore the exact types (timestamp zones,
	// string rather than binary).
	meta.Append("ARROW:schema", base64.StdEncoding.EncodeToString(flight.SerializeSchema(s, props.Allocator())))
	return &tableLayout{schema: ps, props: props, meta: meta, leaves: leaves}, nil
}

// arrowBytes is the memory rec holds: its buffers, all-null arrays aside (a Worker builds them over one shared
// zeroed buffer), and the Go objects of every array, which for a wide type's record of a few rows outweigh its
// data.
func arrowBytes(rec arrow.Record) int64 {
	var n int64
	for _, c := range rec.Columns() {
		n += dataBytes(c.Data())
	}
	return n
}

// arrayOverhead is about what an array costs in Go objects (ArrayData, buffer headers, the typed array).
const arrayOverhead = 512

func dataBytes(d arrow.ArrayData) int64 {
	n := int64(arrayOverhead)
	if d.Len() == 0 || d.NullN() != d.Len() {
		for _, b := range d.Buffers() {
			if b != nil {
				n += int64(b.Cap())
			}
		}
	}
	for _, c := range d.Children() {
		n += dataBytes(c)
	}
	return n
}

// writerProps returns the Table's Parquet writer properties (compression, allocator).
func (t *Table) writerProps() *parquet.WriterProperties {
	return parquet.NewWriterProperties(
		parquet.WithCompression(t.opts.Compression),
		parquet.WithMaxRowGroupLength(int64(t.opts.RowGroupRows)),
		parquet.WithAllocator(t.opts.Allocator),
	)
}

// openPart starts the part file rel.
func (t *Table) openPart(ctx context.Context, rel string) (*part, error) {
	cw, err := newChunkWriter(t.layout.props, len(t.layout.leaves))
	if err != nil {
		return nil, fmt.Errorf("parquet writer: %w", err)
	}
	obj, err := openObject(ctx, t.b, objectKey(t.out, rel), parquetType)
	if err != nil {
		return nil, err
	}
	sink := &countingWriter{w: obj.w}
	sink.Write(parquetMagic)
	if err := sink.err; err != nil {
		obj.abort()
		return nil, fmt.Errorf("start parquet file %s: %w", obj.key, err)
	}
	meta := metadata.NewFileMetadataBuilder(t.layout.schema, t.layout.props, t.layout.meta)
	return &part{rel: rel, obj: obj, sink: sink, meta: meta, cw: cw}, nil
}

// parquetMagic starts and ends a Parquet file.
var parquetMagic = []byte("PAR1")

// closePart writes the footer of p and commits it. On failure p is discarded.
func (t *Table) closePart(ctx context.Context, p *part) (File, error) {
	stop := p.obj.watch(ctx)
	err := writeFooter(p)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		p.obj.abort()
		return File{}, fmt.Errorf("finish parquet file %s: %w", p.obj.key, err)
	}
	if err := p.obj.commit(ctx); err != nil {
		return File{}, err
	}
	return File{Key: p.rel, Rows: p.rows, Bytes: p.sink.n}, nil
}

// writeFooter writes the file metadata of p, its length and the closing magic.
func writeFooter(p *part) error {
	fmd, err := p.meta.Finish()
	if err != nil {
		return err
	}
	start := p.sink.n
	if _, err := fmd.WriteTo(p.sink, nil); err != nil {
		return err
	}
	p.sink.Write(binary.LittleEndian.AppendUint32(nil, uint32(p.sink.n-start)))
	p.sink.Write(parquetMagic)
	return p.sink.err
}

// fail makes err sticky and discards what is pending and the idle parts; a part being written to is discarded
// by its writer when it is done. Called with mu held.
func (t *Table) fail(err error) {
	if t.err == nil {
		t.err = err
	}
	t.releasePending()
	for _, p := range t.idle {
		p.discard()
	}
	t.open -= len(t.idle)
	t.idle = nil
	t.freed.Broadcast()
}

// discard cancels the part's object, so nothing of it is committed.
func (p *part) discard() {
	p.obj.cancel()
	p.obj.abort()
}

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
		for t.err == nil && len(t.idle) < t.open { // row groups of Writes still being written
			t.freed.Wait()
		}
		if t.err != nil {
			return nil, t.err
		}
		err := ctx.Err()
		if err == nil && t.pendingRows > 0 {
			err = t.writeGroups(ctx, []*group{t.cut(t.pendingRows, false)})
		}
		slices.SortFunc(t.idle, func(a, b *part) int { return strings.Compare(a.rel, b.rel) })
		for err == nil && len(t.idle) > 0 {
			p := t.idle[0]
			t.idle = t.idle[1:]
			t.open--
			var f File
			if f, err = t.closePart(ctx, p); err == nil {
				t.files = append(t.files, f)
			}
		}
		if err != nil {
			t.fail(err)
			return nil, t.err
		}
		slices.SortFunc(t.files, func(a, b File) int { return strings.Compare(a.Key, b.Key) })
	}
	return append([]File(nil), t.files...), nil
}

// Abort discards the open part and the rows not yet written, without committing anything more; later calls
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
