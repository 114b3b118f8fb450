package sinks

import (
	"context"
	"fmt"
	"sync"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"gocloud.dev/blob"
)

// Defaults of ParquetOptions.
const (
	DefaultRowGroupRows  = 64 * 1024
	DefaultRowGroupBytes = 128 << 20
	DefaultMaxFileBytes  = 512 << 20
)

// ParquetOptions shape the files of a Table. The zero value works: zstd, row groups of 64Ki rows or 128 MiB,
// parts of 512 MiB, memory.DefaultAllocator.
type ParquetOptions struct {
	// Compression of every column. The zero value (compress.Codecs.Uncompressed) means zstd.
	Compression compress.Compression
	// RowGroupRows caps the rows of a row group.
	RowGroupRows int
	// RowGroupBytes ends a row group once its completed pages reach this size, compressed. The row group is
	// buffered in memory until it ends, so this bounds a Table's memory, give or take what the measure leaves out:
	// each column's open page (up to 1 MiB before encoding) and dictionary (up to 1 MiB).
	RowGroupBytes int64
	// MaxFileBytes starts a new part file once the current one reaches this size (row groups are not split, so
	// a part can exceed it by up to one record batch).
	MaxFileBytes int64
	// Allocator for the writer's buffers.
	Allocator memory.Allocator
	// PartPrefix starts the name of every part file (zero: "part-"): a task of a run spread over several processes
	// writes "part-t0003-00000.parquet" so that it overwrites only its own parts. It must be one PartPrefixFor
	// returns, so that RemoveStale knows the parts as ours.
	PartPrefix string
}

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
	if o.Allocator == nil {
		o.Allocator = memory.DefaultAllocator
	}
	if o.PartPrefix == "" {
		o.PartPrefix = "part-"
	}
	return o
}

// Table writes the records of one resource type in one run to out/<Type>/part-00000.parquet, part-00001... The
// first part is opened on the first Write that has rows, so a type without rows leaves no object.
//
// Each part stores the Arrow schema (ARROW:schema) and the schema's key-value metadata (fhirlake.schema_version,
// fhir.version, fhir.resource_type) in the Parquet footer. A part becomes visible only when it is complete: when it
// reaches MaxFileBytes or on Close. After any failure, and after Abort, the open part is discarded and the Table
// only returns errors.
//
// Table is safe for concurrent use: Write calls are serialised.
type Table struct {
	b      *blob.Bucket
	out    string
	typ    string
	schema *arrow.Schema
	opts   ParquetOptions
	props  *parquet.WriterProperties
	aprops pqarrow.ArrowWriterProperties

	mu    sync.Mutex
	cur   *part
	next  int    // number of the next part
	files []File // committed parts
	err   error  // first failure, or errAborted; sticky
	done  bool   // Close or Abort was called
}

// part is one Parquet file being written.
type part struct {
	rel    string
	obj    *object
	sink   *countingWriter
	fw     *pqarrow.FileWriter
	rows   int64
	rgFull bool // the current row group is full: the next Write starts a new one
}

// NewTable prepares the table of resourceType, whose records all have schema s. Nothing is written until Write.
func NewTable(b *blob.Bucket, out string, resourceType string, s *arrow.Schema, opts ParquetOptions) *Table {
	usePooledZstd()
	opts = opts.withDefaults()
	return &Table{
		b:      b,
		out:    out,
		typ:    resourceType,
		schema: s,
		opts:   opts,
		props: parquet.NewWriterProperties(
			parquet.WithCompression(opts.Compression),
			parquet.WithMaxRowGroupLength(int64(opts.RowGroupRows)),
			parquet.WithAllocator(opts.Allocator),
		),
		aprops: pqarrow.NewArrowWriterProperties(
			pqarrow.WithStoreSchema(),
			pqarrow.WithAllocator(opts.Allocator),
		),
	}
}

// Write appends rec's rows. rec's schema must equal the table's; the caller keeps ownership of rec.
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
	err := ctx.Err()
	if err != nil {
		err = fmt.Errorf("write %s table: %w", t.typ, err)
	} else {
		err = t.write(ctx, rec)
	}
	if err != nil {
		t.fail(err)
		return err
	}
	return nil
}

func (t *Table) write(ctx context.Context, rec arrow.Record) error {
	if t.cur == nil {
		if err := t.openPart(ctx); err != nil {
			return err
		}
	}
	p := t.cur
	stop := p.obj.watch(ctx)
	err := p.append(rec, t.opts)
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p.obj.key, err)
	}
	if p.sink.n+p.fw.RowGroupTotalCompressedBytes() >= t.opts.MaxFileBytes {
		return t.closePart(ctx)
	}
	return nil
}

// append writes rec into the current buffered row group, starting a new one first if the last Write filled it.
// Row groups are ended lazily so that none is ever empty.
func (p *part) append(rec arrow.Record, opts ParquetOptions) error {
	if p.rgFull {
		p.fw.NewBufferedRowGroup() // flushes the full one through sink, which keeps any error
		p.rgFull = false
		if p.sink.err != nil {
			return p.sink.err
		}
	}
	// WriteBuffered splits rec where a row group reaches RowGroupRows (the writer's MaxRowGroupLength).
	if err := p.fw.WriteBuffered(rec); err != nil {
		return err
	}
	if p.sink.err != nil {
		return p.sink.err
	}
	p.rows += rec.NumRows()
	n, err := p.fw.RowGroupNumRows()
	if err != nil {
		return err
	}
	if n >= opts.RowGroupRows || p.fw.RowGroupTotalCompressedBytes() >= opts.RowGroupBytes {
		p.rgFull = true
	}
	return nil
}

func (t *Table) openPart(ctx context.Context) error {
	rel := fmt.Sprintf(partNameFormat, t.typ, t.opts.PartPrefix, t.next)
	t.next++
	obj, err := openObject(ctx, t.b, objectKey(t.out, rel), parquetType)
	if err != nil {
		return err
	}
	sink := &countingWriter{w: obj.w}
	fw, err := pqarrow.NewFileWriter(t.schema, sink, t.props, t.aprops)
	if err == nil {
		err = sink.err
	}
	if err != nil {
		if fw != nil {
			_ = fw.Close()
		}
		obj.abort()
		return fmt.Errorf("start parquet file %s: %w", obj.key, err)
	}
	t.cur = &part{rel: rel, obj: obj, sink: sink, fw: fw}
	return nil
}

// closePart writes the footer of the current part and commits it.
func (t *Table) closePart(ctx context.Context) error {
	p := t.cur
	t.cur = nil
	stop := p.obj.watch(ctx)
	err := p.fw.Close() // footer; sink has no Close, so this does not commit
	if err == nil {
		err = p.sink.err
	}
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		p.obj.abort()
		return fmt.Errorf("finish parquet file %s: %w", p.obj.key, err)
	}
	if err := p.obj.commit(ctx); err != nil {
		return err
	}
	t.files = append(t.files, File{Key: p.rel, Rows: p.rows, Bytes: p.sink.n})
	return nil
}

// fail discards the open part and makes err sticky.
func (t *Table) fail(err error) {
	if t.cur != nil {
		t.cur.discard()
		t.cur = nil
	}
	if t.err == nil {
		t.err = err
	}
}

// discard cancels the part's object before the Parquet writer is closed (which releases its buffers), so
// nothing of it is committed.
func (p *part) discard() {
	p.obj.cancel()
	_ = p.fw.Close()
	p.obj.abort()
}

// Close commits the open part and returns every part written, in order. A Table that failed returns its error
// and commits nothing more. Close after Close returns the same files.
func (t *Table) Close(ctx context.Context) ([]File, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil {
		return nil, t.err
	}
	if !t.done {
		t.done = true
		if t.cur != nil {
			if err := t.closePart(ctx); err != nil {
				t.fail(err)
				return nil, err
			}
		}
	}
	return append([]File(nil), t.files...), nil
}

// Abort discards the open part without committing it; later calls return an error. Parts already committed
// (each complete) stay until RemoveStale; they are not published until a manifest lists them.
func (t *Table) Abort() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done = true
	t.fail(fmt.Errorf("%s table: %w", t.typ, errAborted))
}

// countingWriter is the sink handed to pqarrow. It counts bytes and keeps the first write error instead of
// returning it: parts of the Parquet writer panic on a write error (the magic bytes at start) or drop it
// (NewBufferedRowGroup closing the previous row group), so the Table checks err after every call. It has no
// Close method, so pqarrow's Close cannot commit the blob: the Table commits it when the footer is complete.
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
