// Package pipeline wires one conversion run: it lists the NDJSON objects of a source, reads them concurrently
// (reader), validates and converts every line (transform), and writes Parquet tables, quarantined lines and the
// run manifest (sinks). It sits between cmd/fhirlake (and later the trigger-driven worker) and the stage packages,
// and it is the only place where those stages meet.
//
// Per-Patient objects (Group/$export?organizeOutputBy=Patient) are read in blocks (reader.BlockScanner). Their
// resources go to the same per-type tables as any other, each distinct (type, id, meta.versionId or else
// meta.lastUpdated) written once however many blocks hold it (keySet), and every (block, resource) pair becomes a
// row of the patient-link table OUT/_patient_links. Batches of lines carry their block, so the blocks of one
// object are decoded in parallel like any other lines.
//
// A run can also be spread over the tasks of a Cloud Run job (plan.go, tasks.go): NewPlan cuts the objects into
// byte-range splits assigned to tasks, RunTask converts one task's splits into parts of its own and a task record,
// and the task that finds every record merges them and publishes.
package pipeline

import (
	"cmp"
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"gocloud.dev/blob"
	"golang.org/x/sync/errgroup"

	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/schema"
	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/transform"
)

// ErrForeignOutput is returned when the output location already holds a published run of another source.
// Replacing it would silently destroy somebody else's tables, so the caller must choose another location.
var ErrForeignOutput = errors.New("output holds a run of another source")

// Source is where the NDJSON comes from.
type Source struct {
	Bucket *blob.Bucket
	Prefix string // objects under this prefix are read ("" is the whole bucket)
	Name   string // how the manifest names the source, e.g. "gs://bucket/export/2026-11-25"
	// Objects, when set, is the exact list to read (as an export reported it); otherwise the prefix is listed.
	// An object's Layout, when set, is how its producer says it is arranged and wins over Options.Layout.
	Objects []reader.Object
}

// Sink is where the tables, rejects and manifest go.
type Sink struct {
	Bucket *blob.Bucket
	Prefix string // "" is the bucket root
}

// Options tune a run. The zero value works.
type Options struct {
	Workers        int   // decoding goroutines; zero: GOMAXPROCS
	Readers        int   // objects read at once, at most Workers; zero: min(Workers, 4)
	MaxLineBytes   int   // zero: the reader's default (64 MiB)
	RecursionDepth int   // zero: the schema's default (2)
	BatchRows      int   // rows per Arrow record batch; zero: 8192
	BatchBytes     int64 // Arrow memory a decoding goroutine holds before it flushes; zero: 4 MiB
	// Parquet shapes the tables. A nil Parquet.Budget gets one of DefaultTableBudget and DefaultLayoutBudget for
	// the run: the open row groups and the layouts, over all tables, hold about that much memory at most, and the
	// row groups give way to the rest of the process over HeapTarget.
	Parquet sinks.ParquetOptions
	// HeapTarget is the live heap, in bytes, over which the open row groups of the run's own budget
	// (sinks.MemoryBudget.GiveWay) and the decoders' pending batches give way to the rest of the process. Zero:
	// two thirds of Go's soft memory limit as the run starts (none without a limit); negative: never. A budget
	// of the caller's own gives way as the caller set it to.
	HeapTarget int64
	// Allocator backs the Arrow batches and the Parquet writer. Zero: memory.DefaultAllocator, except for the
	// decoders' batches, whose memory is reused once their records are written (transform.Options.Allocator).
	Allocator memory.Allocator
	RunID     string
	// Layout of the objects whose own Layout is unknown; zero: reader.LayoutAuto, decided per object from its
	// first lines.
	Layout reader.Layout
	// Validator is transform.Options.Validator: "" or "reference" (google/fhir/go), or "fast".
	Validator string
	// DedupeKeys bounds the keys of per-Patient resources a run holds to write each resource once (about 34 bytes
	// a key). Zero: DefaultDedupeKeys; negative: no bound. Past it, a resource whose key is not held is written and
	// its key spilled to the output's bucket, and the run drops the copies the spilled keys show at its end,
	// rewriting the parts of the types that have any (spill.go). A task of a spread run does the same with the
	// keys it spills for the merge anyway, before it records them.
	DedupeKeys int

	// Annotate, when set, is called with the finished manifest just before it is written, so that a caller adds
	// what it knows (the export handle, the message, phase timings) in the one write that publishes the run.
	Annotate func(*sinks.Manifest)

	// Progress, when set, is called about every ProgressEvery (zero: 5s) while the run goes, and once at the end.
	Progress      func(Progress)
	ProgressEvery time.Duration
	Now           func() time.Time // zero: time.Now

	// Timings, when set, accumulates where the run's goroutines spent their time (fhirlake bench reads it).
	Timings *Timings
}

// Timings is the time a run's goroutines spent per phase, summed over goroutines, so a phase running on two
// goroutines for a second counts two seconds. Its fields are updated atomically while the run goes.
type Timings struct {
	// Read is reading lines: fetching and decompressing objects and cutting them into lines, without the time a
	// reader waits for a decoder to take its batch.
	Read atomic.Int64
	// Validate is deciding each line's verdict (transform.Worker.Validate).
	Validate atomic.Int64
	// Build is converting valid lines into Arrow builders and cutting record batches (Append, Flush).
	Build atomic.Int64
	// Write is encoding record batches into Parquet and uploading them (sinks.Table Write and Close), and
	// quarantining rejected lines.
	Write atomic.Int64
}

type phase int

const (
	phaseRead phase = iota
	phaseValidate
	phaseBuild
	phaseWrite
)

// add adds the time elapsed since from to phase p; a nil Timings ignores it.
func (t *Timings) add(p phase, from time.Time) {
	if t == nil {
		return
	}
	t.addSpan(p, int64(time.Since(from)))
}

// now is the time for a later add or lap: the zero time, without reading the clock, when t is nil.
func (t *Timings) now() time.Time {
	if t == nil {
		return time.Time{}
	}
	return time.Now()
}

// lineTimes is what one decoder spent validating and building the lines of a batch, added to t once per batch:
// Timings' counters are shared by the decoders, and adding to them line by line had the cores contend for them.
// A decoder without Timings (t nil) does not read the clock.
//
// The clock is read at the start and the end of a batch, and around the phases of one line in sampleLines only
// (of every line until one has been built): reading it three times a line took 3% of a one-core bench over
// synthea-100, which fhirlake bench then reported as slower than a run without Timings. The batch's time, but for
// its quarantine writes (counted as writing), is split between validating and building as the lines sampled so
// far split theirs.
type lineTimes struct {
	t               *Timings
	lines           int       // lines begun, for the sampling
	start           time.Time // of the batch
	quarantine      int64     // the batch's time writing rejects
	validate, build int64     // of the lines sampled so far
}

// sampleLines is one line in how many whose phases are timed.
const sampleLines = 8

// begin starts timing a batch.
func (lt *lineTimes) begin() {
	if lt.t != nil {
		lt.start = time.Now()
	}
}

// sampled reports whether the next line's phases are timed, and counts it.
func (lt *lineTimes) sampled() bool {
	lt.lines++
	return lt.t != nil && (lt.lines%sampleLines == 1 || lt.build == 0)
}

// lap adds the time elapsed since from to *d, and returns the time now, from which the next phase counts.
func (lt *lineTimes) lap(d *int64, from time.Time) time.Time {
	now := time.Now()
	*d += int64(now.Sub(from))
	return now
}

// quarantined counts the time since from, spent writing a reject of the batch, as writing.
func (lt *lineTimes) quarantined(from time.Time) {
	if lt.t == nil {
		return
	}
	d := int64(time.Since(from))
	lt.t.addSpan(phaseWrite, d)
	lt.quarantine += d
}

// flush adds the batch's times to Timings.
func (lt *lineTimes) flush() {
	if lt.t == nil {
		return
	}
	total := int64(time.Since(lt.start)) - lt.quarantine
	validate := total
	if sampled := lt.validate + lt.build; sampled > 0 {
		validate = int64(float64(total) * float64(lt.validate) / float64(sampled))
	}
	lt.t.Validate.Add(validate)
	lt.t.Build.Add(total - validate)
	lt.quarantine = 0
}

func (t *Timings) addSpan(p phase, d int64) {
	switch p {
	case phaseRead:
		t.Read.Add(d)
	case phaseValidate:
		t.Validate.Add(d)
	case phaseBuild:
		t.Build.Add(d)
	case phaseWrite:
		t.Write.Add(d)
	}
}

// Progress is a snapshot of a running conversion. It holds counts only, never content.
type Progress struct {
	ObjectsDone, ObjectsTotal int
	Lines, Rejected           int64
	BytesRead, BytesTotal     int64 // compressed bytes of finished objects, of all objects
	Elapsed                   time.Duration
	// DedupeKeys is the number of resource versions of per-Patient objects the run holds a key of, and
	// DedupeBytes the memory of those keys: they grow with the input up to Options.DedupeKeys. DedupeSpilled
	// is the number of resources written past that bound, whose keys went to the bucket.
	DedupeKeys, DedupeBytes, DedupeSpilled int64
}

// validator is the name of the validation path the run takes, as the manifest records it.
func (o Options) validator() string {
	if o.Validator == "" {
		return transform.ValidatorReference
	}
	return o.Validator
}

// DefaultTableBudget is the memory that the open row groups may hold (compressed pages, pages being filled,
// dictionaries, with the room their buffers keep), over all the tables of a run, unless Options.Parquet.Budget
// says otherwise. Smaller row groups cost speed: every row group repeats the dictionaries of its column chunks.
// On synthea-100 × 60, 40 MiB was 9% slower on two cores than this, and this is as fast as 40 MiB was when the
// budget counted the bytes in the buffers rather than their size (the row groups then held up to 66 MB).
const DefaultTableBudget = 56 << 20

// DefaultLayoutBudget is the memory that the tables' layouts may hold (the leaf paths of their schemas, and the
// chunk writers' slots for them), over all the tables of a run, unless Options.Parquet.Budget says otherwise.
// synthea-100's 19 types hold 4 MB, so a run of a few types never reaches it; r4-examples' 146 would hold 28 MB.
// A table that retires builds its layout again when it next gets rows, and that garbage is what sets how often the
// collector runs in a run of many types: with 16 MiB, r4-examples ten times over on two cores ran at 34 to 44 MB/s
// with 541 to 711 collections and peaked at 256 to 274 MB; with this, 46 to 50 MB/s, 439 to 462 collections, 247
// to 254 MB (three runs each, alternating). Three and five times over, and on one core, it peaks as before; 24 MiB
// peaked at up to 259 MB, 10 MiB at 297.
const DefaultLayoutBudget = 20 << 20

const (
	defaultReaders   = 4 // objects read at once, unless Workers are fewer
	defaultBatchRows = 8192
	// defaultBatchBytes: with 8 MiB, the batches of two decoders and the records they were writing were 13 to 33
	// MB at r4-examples' two-core peaks; 4 MiB peaked 16 MB lower there (same binary, six alternating runs) and
	// was as fast on synthea-100 × 10 and × 60, on one core and two.
	defaultBatchBytes = 4 << 20
	// A batch of lines handed from a reader to a decoding worker. Small batches keep the hand-off cheap,
	// bounded ones keep memory bounded: at most about 2 × Workers waiting in the readers' channels, and one per
	// reader and per decoder, are alive at once.
	batchLines = 256
	batchBytes = 1 << 20
	// retireAfter is how many rows a decoder appends without one of a type before, while the live heap is over
	// its target (sinks.MemoryBudget.GiveWay), it retires the type if none of its rows is pending: four batches of
	// lines. On r4-examples × 3 on two cores, peaks of 241 to 272 MB (median 252) against 256 to 301 (median
	// 266), twelve alternating runs, as fast; synthea-100 × 10, whose live heap stays under the target, unchanged.
	retireAfter = 4 * batchLines
)

// retiredHook, when set (by tests), is called with the types a decoder retired.
var retiredHook func(types []string)

// Run converts every object of src into dst and publishes the manifest last. It returns the manifest it published.
//
// A run into a location that already holds a manifest for the same source replaces it: the old manifest is removed
// first (the output is unpublished while the run goes), and part files that the new run did not write are deleted
// before the new manifest is written. A run into a location holding another source's manifest fails with
// ErrForeignOutput.
func Run(ctx context.Context, src Source, dst Sink, opts Options) (*sinks.Manifest, error) {
	opts = opts.withDefaults()
	started := opts.Now().UTC()

	reg, err := schema.New(schema.Options{RecursionDepth: opts.RecursionDepth})
	if err != nil {
		return nil, fmt.Errorf("build schemas: %w", err)
	}
	if err := claimOutput(ctx, dst, src.Name); err != nil {
		return nil, err
	}
	objects := src.Objects
	if objects == nil {
		if objects, err = reader.List(ctx, src.Bucket, src.Prefix); err != nil {
			return nil, fmt.Errorf("list %s: %w", src.Name, err)
		}
	}

	r := &run{
		src:     src,
		dst:     dst,
		opts:    opts,
		reg:     reg,
		tables:  map[string]*sinks.Table{},
		rejects: sinks.NewRejects(dst.Bucket, dst.Prefix),
		inputs:  make([]sinks.Input, len(objects)),
		stats:   map[string]*typeStats{},
		seen:    newKeySet(opts.DedupeKeys),
		links:   sinks.NewTable(dst.Bucket, dst.Prefix, schema.LinksTable, schema.Links(), opts.Parquet),
	}
	if opts.DedupeKeys > 0 {
		if r.spill, err = newKeySpill(ctx, dst, runSpillName(started), spillDir, oldSpillDir); err != nil {
			return nil, err
		}
	}
	for _, o := range objects {
		r.bytesTotal += o.Size
	}
	if err := r.convert(ctx, objects, started); err != nil {
		r.abort()
		return nil, err
	}
	m, err := r.publish(ctx, started)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// allocator is Options.Allocator, memory.DefaultAllocator when none is given. Allocator itself stays nil then,
// so that the decoders use their own (transform.Options.Allocator).
func (o Options) allocator() memory.Allocator {
	if o.Allocator == nil {
		return memory.DefaultAllocator
	}
	return o.Allocator
}

// HeapTargetFor returns the heap target (Options.HeapTarget) of runs under a soft memory limit: two thirds of
// it, which leaves the collector room to work between collections (fhirlake's command raises its limit only when
// more than 80% of it stays live); 0, none, without a limit (0 or less, or math.MaxInt64).
func HeapTargetFor(limit int64) int64 {
	if limit <= 0 || limit == math.MaxInt64 {
		return 0
	}
	return limit / 3 * 2
}

// heapTarget returns the live heap over which the row groups give way: HeapTarget, or when it is zero the target
// for Go's soft memory limit as the run starts (HeapTargetFor). 0: none.
func (o Options) heapTarget() int64 {
	if o.HeapTarget != 0 {
		return max(o.HeapTarget, 0)
	}
	return HeapTargetFor(debug.SetMemoryLimit(-1))
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Readers <= 0 {
		o.Readers = defaultReaders
	}
	o.Readers = min(o.Readers, o.Workers) // each reader has a decoder of its own (feed)
	if o.BatchRows <= 0 {
		o.BatchRows = defaultBatchRows
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = defaultBatchBytes
	}
	if o.Parquet.Allocator == nil {
		o.Parquet.Allocator = o.allocator()
	}
	if o.Parquet.Budget == nil {
		o.Parquet.Budget = sinks.NewMemoryBudget(DefaultTableBudget, DefaultLayoutBudget)
		o.Parquet.Budget.GiveWay(o.heapTarget())
	}
	if o.Parquet.MaxOpenParts <= 0 {
		o.Parquet.MaxOpenParts = o.Workers // a type that is most of the input is encoded on every core
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	if o.DedupeKeys == 0 {
		o.DedupeKeys = DefaultDedupeKeys
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// claimOutput refuses another source's output and unpublishes a previous run of the same source.
func claimOutput(ctx context.Context, dst Sink, source string) error {
	prev, err := sinks.ReadManifest(ctx, dst.Bucket, dst.Prefix)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("read previous manifest: %w", err)
	case prev.Source != source:
		return fmt.Errorf("%w: it holds %q, this run reads %q", ErrForeignOutput, prev.Source, source)
	}
	if err := sinks.Unpublish(ctx, dst.Bucket, dst.Prefix); err != nil {
		return fmt.Errorf("unpublish previous run: %w", err)
	}
	return nil
}

type run struct {
	src  Source
	dst  Sink
	opts Options
	reg  *schema.Registry

	mu      sync.Mutex
	tables  map[string]*sinks.Table
	stats   map[string]*typeStats
	rejects *sinks.Rejects
	inputs  []sinks.Input
	links   *sinks.Table // the patient-link table
	seen    *keySet      // resource versions written from per-Patient objects
	spill   *keySpill    // the keys of those written past Options.DedupeKeys; nil for a task
	bufs    sync.Pool    // *[]byte of batchBytes capacity: the line buffers of batches, reused
	lineSet sync.Pool    // *[]line of batchLines capacity: the lines of batches, reused

	blockIssues      []sinks.BlockIssue
	blockIssuesTotal int64

	// A task of a spread run (tasks.go): objects[i] is splits[i], and keys collects the dedupe key of every row it
	// writes from per-Patient objects, in the bucket.
	splits []reader.Split
	keys   *keySpill

	bytesTotal  int64
	bytesRead   atomic.Int64
	objectsDone atomic.Int64
	lines       atomic.Int64
	rejected    atomic.Int64
}

type typeStats struct{ valid, rejected, duplicates, links, validByReference int64 }

// batch is a run of lines of one object, copied out of the reader's buffer.
type batch struct {
	key        string
	perPatient bool // the object is read in Patient blocks: deduplicate, and link lines in a block
	lines      []line
	buf        []byte // holds the lines' bytes; back to run.bufs once the batch is decoded
}

type line struct {
	number   int64
	offset   int64
	length   int64
	oversize bool
	bytes    []byte
	// the line's Patient block (reader.BlockLine); block 0 is none
	block    int64
	patient  string
	position int64
}

func (r *run) convert(ctx context.Context, objects []reader.Object, started time.Time) error {
	g, gctx := errgroup.WithContext(ctx)

	// Readers: a bounded number of objects at once, in order, each cut into batches of lines that its reader
	// hands over its own channel (see feed).
	readers := max(min(r.opts.Readers, len(objects)), 1)
	chans := make([]chan batch, readers)
	var next atomic.Int64
	for k := range chans {
		chans[k] = make(chan batch, max(2*r.opts.Workers/readers, 1))
		g.Go(func() error {
			defer close(chans[k])
			for {
				i := int(next.Add(1) - 1)
				if i >= len(objects) {
					return nil
				}
				if err := r.readObject(gctx, i, objects[i], chans[k]); err != nil {
					return err
				}
			}
		})
	}

	// Decoders: one transform.Worker each, fed from all objects, their own reader's first.
	for d := range r.opts.Workers {
		g.Go(func() error { return r.decode(gctx, newFeed(chans, d)) })
	}

	stopProgress := r.reportProgress(gctx, len(objects), started)
	err := g.Wait()
	stopProgress()
	return err
}

func (r *run) readObject(ctx context.Context, i int, o reader.Object, work chan<- batch) error {
	began := time.Now()
	var waited time.Duration // blocked on handing batches over
	defer func() { r.opts.Timings.add(phaseRead, began.Add(waited)) }()
	sc, closer, err := r.open(ctx, i, o)
	if err != nil {
		return fmt.Errorf("open %s: %w", o.Key, err)
	}
	defer closer.Close()
	layout := o.Layout
	if layout == "" {
		layout = r.opts.Layout
	}
	bs := reader.NewBlockScanner(sc, reader.BlockOptions{Layout: layout})

	b := batch{key: o.Key, lines: r.lineSlice()}
	var buf []byte
	var last int64 // number of the last line read
	send := func() error {
		if len(b.lines) == 0 {
			return nil
		}
		b.perPatient = bs.Layout() == reader.LayoutPatient
		b.buf = buf
		t := time.Now()
		select {
		case work <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		waited += time.Since(t)
		b = batch{key: o.Key, lines: r.lineSlice()}
		buf = nil
		return nil
	}
	for bs.Scan() {
		l := bs.Line()
		last = l.Number
		if buf == nil {
			buf = r.lineBuffer(len(l.Bytes))
		} else if len(buf)+len(l.Bytes) > cap(buf) {
			if err := send(); err != nil {
				return err
			}
			buf = r.lineBuffer(len(l.Bytes))
		}
		start := len(buf)
		buf = append(buf, l.Bytes...)
		b.lines = append(b.lines, line{
			number: l.Number, offset: l.Offset, length: l.Length, oversize: l.Oversize,
			bytes: buf[start:len(buf):len(buf)],
			block: l.Block, patient: l.Patient, position: l.Position,
		})
		if len(b.lines) >= batchLines {
			if err := send(); err != nil {
				return err
			}
		}
	}
	readErr := bs.Err()
	damage, isDamage := damageOf(ctx, readErr)
	if readErr != nil && !isDamage {
		return fmt.Errorf("read %s: %w", o.Key, readErr)
	}
	if err := send(); err != nil {
		return err
	}
	in := sinks.Input{Object: o.Key, Lines: bs.Lines(), Bytes: o.Size, Layout: string(bs.Layout()),
		Blocks: bs.Blocks(), Headers: bs.Headers()}
	if isDamage {
		// The lines before the damage are converted; the object is recorded as not read to its end.
		in.Error = damage
		issue := sinks.Issue{Code: "structure", Detail: "object not read to its end: " + damage}
		if err := r.rejects.WriteInput(ctx, o.Key, last+1, []sinks.Issue{issue}); err != nil {
			return fmt.Errorf("quarantine %s: %w", o.Key, err)
		}
	}
	issues, total := bs.Issues()
	r.mu.Lock()
	r.inputs[i] = in
	for _, is := range issues {
		r.blockIssues = append(r.blockIssues, sinks.BlockIssue{Object: is.Key, Line: is.Line, Offset: is.Offset, Reason: is.Reason})
	}
	r.blockIssuesTotal += total
	r.mu.Unlock()
	r.bytesRead.Add(o.Size)
	r.objectsDone.Add(1)
	return nil
}

// lineBuffer returns an empty buffer for a batch whose first line has n bytes: a reused one of batchBytes when
// the line fits.
func (r *run) lineBuffer(n int) []byte {
	if n > batchBytes {
		return make([]byte, 0, n)
	}
	if p, ok := r.bufs.Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return make([]byte, 0, batchBytes)
}

// lineSlice returns an empty slice for the lines of a batch.
func (r *run) lineSlice() []line {
	if p, ok := r.lineSet.Get().(*[]line); ok {
		return *p
	}
	return make([]line, 0, batchLines)
}

// recycle hands a decoded batch's buffer and lines back for reuse; nothing may refer to its lines any more.
func (r *run) recycle(b batch) {
	if cap(b.buf) == batchBytes {
		buf := b.buf[:0]
		r.bufs.Put(&buf)
	}
	if cap(b.lines) == batchLines {
		clear(b.lines) // no hold on the buffers of lines over batchBytes, which are not reused
		lines := b.lines[:0]
		r.lineSet.Put(&lines)
	}
}

// damageOf tells a read error that is the object's own content from a failure to read it. A gzip stream with a bad
// header, corrupt data or a wrong checksum, or one that ends early, is damage: the object is rejected with the
// reason and the run goes on. Anything else (network, permissions, cancellation) stops the run.
//
// A stream that ends early is the object's own: the storage clients resume a short read from its offset
// (cloud.google.com/go/storage retries io.ErrUnexpectedEOF) and report what they cannot resume as their own error.
func damageOf(ctx context.Context, err error) (reason string, ok bool) {
	var corrupt flate.CorruptInputError
	switch {
	case err == nil || ctx.Err() != nil:
		return "", false
	case errors.Is(err, gzip.ErrHeader):
		return "invalid gzip header", true
	case errors.Is(err, gzip.ErrChecksum):
		return "gzip checksum mismatch: corrupt data", true
	case errors.As(err, &corrupt):
		return fmt.Sprintf("corrupt gzip data at compressed byte %d", int64(corrupt)), true
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated gzip stream: it ends before its data does", true
	}
	return "", false
}

func (r *run) decode(ctx context.Context, work *feed) error {
	w, err := transform.NewWorker(r.reg, transform.Options{
		BatchRows: r.opts.BatchRows, BatchBytes: r.opts.BatchBytes, Allocator: r.opts.Allocator, // nil: the Worker's own
		Validator: r.opts.Validator,
	})
	if err != nil {
		return fmt.Errorf("start decoder: %w", err)
	}
	defer w.Release()
	lk := newLinkBuilder(r.opts.allocator())
	defer lk.release()
	local := map[string]*typeStats{}
	defer r.mergeStats(local)
	lt := lineTimes{t: r.opts.Timings}

	for {
		b, ok, err := work.next(ctx)
		if err != nil {
			return err
		}
		if !ok {
			if err := r.flushLinks(ctx, lk); err != nil {
				return err
			}
			return r.flush(ctx, w, 0)
		}
		r.lines.Add(int64(len(b.lines)))
		lt.begin()
		for _, l := range b.lines {
			if err := r.decodeLine(ctx, w, lk, b, l, local, &lt); err != nil {
				return err
			}
		}
		lt.flush()
		r.recycle(b)
		if err := r.flushFull(ctx, w); err != nil {
			return err
		}
		if r.opts.Parquet.Budget.Excess() > 0 {
			// Giving way: let go of the types this decoder is done with (transform.Worker.RetireIdle).
			if retired := w.RetireIdle(retireAfter); retiredHook != nil {
				retiredHook(retired)
			}
		}
		if lk.rows >= r.opts.BatchRows {
			if err := r.flushLinks(ctx, lk); err != nil {
				return err
			}
		}
	}
}

func (r *run) decodeLine(ctx context.Context, w *transform.Worker, lk *linkBuilder, b batch, l line, local map[string]*typeStats, lt *lineTimes) error {
	key := b.key
	if l.oversize {
		r.rejected.Add(1)
		statsFor(local, "").rejected++
		rej := sinks.Reject{
			Source: key, Line: l.number, Offset: l.offset,
			Issues: []sinks.Issue{{
				Code:   "too-long",
				Detail: fmt.Sprintf("line of %d bytes is over the %d-byte limit", l.length, r.maxLineBytes()),
			}},
		}
		defer lt.quarantined(r.opts.Timings.now())
		return r.rejectStreamed(ctx, key, l, rej)
	}
	timed := lt.sampled()
	var t time.Time
	if timed {
		t = time.Now()
	}
	res := w.Validate(l.bytes)
	if timed {
		t = lt.lap(&lt.validate, t)
	}
	if res.Valid {
		st := statsFor(local, res.ResourceType)
		st.valid++
		if res.ByReference {
			st.validByReference++
		}
		// A resource of a per-Patient object is written once, whichever block (of whichever object) holds it
		// first; a resource without an id cannot be told apart and is always written. Its version is taken as the
		// table stores it (normalVersion): two spellings of one meta.lastUpdated instant are one version, as
		// they are to a spread run's merge. Past Options.DedupeKeys the set takes no more keys: a resource whose
		// key it does not hold is written and its key spilled, and the run drops the copies at its end (spill.go).
		write, held := true, true
		var version string
		if b.perPatient && res.ID != "" {
			version = normalVersion(res.Version)
			if write, held = r.seen.add(res.ResourceType, res.ID, version); !write {
				st.duplicates++
			}
		}
		if write {
			err := w.Append(l.bytes, res)
			if timed {
				lt.lap(&lt.build, t)
			}
			if err != nil {
				return fmt.Errorf("convert %s line %d: %w", key, l.number, err)
			}
			if !held && r.spill != nil {
				if err := r.spill.add(ctx, res.ResourceType, dedupeKey(res.ResourceType, res.ID, version)); err != nil {
					return err
				}
			}
			if b.perPatient && res.ID != "" && r.keys != nil {
				if err := r.keys.add(ctx, res.ResourceType, dedupeKey(res.ResourceType, res.ID, version)); err != nil {
					return err
				}
			}
		}
		if b.perPatient && l.block > 0 && res.ID != "" {
			st.links++
			lk.add(l.patient, res, l.position, key, l.number)
		}
		return nil
	}
	r.rejected.Add(1)
	typ := res.ResourceType
	if !res.Known {
		typ = ""
	}
	statsFor(local, typ).rejected++
	rej := sinks.Reject{
		Source: key, Line: l.number, Offset: l.offset, ResourceType: res.ResourceType, Known: res.Known, ID: res.ID,
		Issues: make([]sinks.Issue, len(res.Issues)), Raw: l.bytes,
	}
	for i, is := range res.Issues {
		rej.Issues[i] = sinks.Issue{Path: is.Path, Code: is.Code, Detail: is.Detail}
	}
	defer lt.quarantined(r.opts.Timings.now())
	if err := r.rejects.Write(ctx, rej, nil); err != nil {
		return fmt.Errorf("quarantine %s line %d: %w", key, l.number, err)
	}
	return nil
}

// rejectStreamed quarantines a line too long to hold in memory by copying it from the source object.
func (r *run) rejectStreamed(ctx context.Context, key string, l line, rej sinks.Reject) error {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(reader.CopyLine(ctx, r.src.Bucket, key, l.offset, l.length, pw))
	}()
	err := r.rejects.Write(ctx, rej, pr)
	pr.CloseWithError(errors.New("quarantine ended"))
	if err != nil {
		return fmt.Errorf("quarantine %s line %d: %w", key, l.number, err)
	}
	return nil
}

// open opens input i: the whole object o, or in a task of a spread run its split.
func (r *run) open(ctx context.Context, i int, o reader.Object) (*reader.Scanner, io.Closer, error) {
	ropts := reader.Options{MaxLineBytes: r.opts.MaxLineBytes}
	if r.splits != nil {
		return reader.OpenSplit(ctx, r.src.Bucket, r.splits[i], ropts)
	}
	return reader.Open(ctx, r.src.Bucket, o.Key, ropts)
}

func (r *run) maxLineBytes() int {
	if r.opts.MaxLineBytes > 0 {
		return r.opts.MaxLineBytes
	}
	return reader.DefaultMaxLineBytes
}

// flushFull hands a decoder's full batches to the sinks: the types with a full batch or, when the pending batches
// hold too much memory together (batchBytes), the types that hold the most, until they hold half as much.
// Flushing every type then would cut the small types into many small records, each as wide as its type.
func (r *run) flushFull(ctx context.Context, w *transform.Worker) error {
	if limit := r.batchBytes(); w.PendingBytes() >= limit {
		return r.write(ctx, w, w.LargestTypes(limit/2))
	}
	if !w.Full() {
		return nil
	}
	return r.flush(ctx, w, r.opts.BatchRows)
}

// batchBytes returns the Arrow memory a decoder's pending batches may hold now: Options.BatchBytes, less its share
// of what the live heap holds over the budget's target (sinks.MemoryBudget.GiveWay), down to a quarter.
func (r *run) batchBytes() int64 {
	excess := r.opts.Parquet.Budget.Excess()
	return max(r.opts.BatchBytes-excess/int64(r.opts.Workers), r.opts.BatchBytes/4)
}

// flush hands the batches of the types with at least minRows pending rows to the sinks (minRows 0: every type).
func (r *run) flush(ctx context.Context, w *transform.Worker, minRows int) error {
	return r.write(ctx, w, w.PendingTypes(minRows))
}

// write flushes the pending batches of types, one type after the other, and writes each record into its table
// before the next is made: a decoder holds one record at a time, not one per type (at the end of a run, every
// type it has met).
func (r *run) write(ctx context.Context, w *transform.Worker, types []string) error {
	for _, typ := range types {
		t := r.opts.Timings.now()
		rec, err := w.FlushType(typ)
		r.opts.Timings.add(phaseBuild, t)
		if err != nil {
			return fmt.Errorf("build record batches: %w", err)
		}
		t = r.opts.Timings.now()
		err = r.writeRecord(ctx, rec)
		rec.Release()
		r.opts.Timings.add(phaseWrite, t)
		if err != nil {
			return err
		}
	}
	return nil
}

// writeRecord writes rec into the table of its type.
func (r *run) writeRecord(ctx context.Context, rec arrow.Record) error {
	t, err := r.table(rec.Schema())
	if err != nil {
		return err
	}
	if err := t.Write(ctx, rec); err != nil {
		return fmt.Errorf("write %s: %w", resourceTypeOf(rec.Schema()), err)
	}
	return nil
}

// flushLinks hands a decoder's pending link rows to the link table.
func (r *run) flushLinks(ctx context.Context, lk *linkBuilder) error {
	if lk.rows == 0 {
		return nil
	}
	rec := lk.record()
	defer rec.Release()
	if err := r.links.Write(ctx, rec); err != nil {
		return fmt.Errorf("write %s: %w", schema.LinksTable, err)
	}
	return nil
}

func resourceTypeOf(s *arrow.Schema) string {
	md := s.Metadata()
	if i := md.FindKey(schema.MetaResourceType); i >= 0 {
		return md.Values()[i]
	}
	return ""
}

func (r *run) table(s *arrow.Schema) (*sinks.Table, error) {
	typ := resourceTypeOf(s)
	if typ == "" {
		return nil, errors.New("record batch without a resource type in its schema metadata")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.tables[typ]
	if !ok {
		t = sinks.NewTable(r.dst.Bucket, r.dst.Prefix, typ, s, r.opts.Parquet)
		r.tables[typ] = t
	}
	return t, nil
}

func statsFor(m map[string]*typeStats, typ string) *typeStats {
	s, ok := m[typ]
	if !ok {
		s = &typeStats{}
		m[typ] = s
	}
	return s
}

func (r *run) mergeStats(local map[string]*typeStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for typ, s := range local {
		t := statsFor(r.stats, typ)
		t.valid += s.valid
		t.rejected += s.rejected
		t.duplicates += s.duplicates
		t.links += s.links
		t.validByReference += s.validByReference
	}
}

func (r *run) abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.tables {
		t.Abort()
	}
	r.links.Abort()
	r.rejects.Abort()
}

// publish closes every sink, removes what an earlier run left behind, and writes the manifest last.
func (r *run) publish(ctx context.Context, started time.Time) (*sinks.Manifest, error) {
	m, err := r.close(ctx, started)
	if err != nil {
		return nil, err
	}
	if _, err := r.reconcile(ctx, r.spill, m, sinks.RewrittenPartPrefix, nil); err != nil {
		return nil, err
	}
	if err := checkTotals(m); err != nil {
		return nil, err
	}
	if _, err := sinks.RemoveStale(ctx, r.dst.Bucket, r.dst.Prefix, keepOf(m)); err != nil {
		return nil, fmt.Errorf("remove stale output: %w", err)
	}
	if err := r.spill.remove(ctx); err != nil {
		return nil, err
	}
	m.Finished = r.opts.Now().UTC()
	if r.opts.Annotate != nil {
		r.opts.Annotate(m)
	}
	if err := sinks.WriteManifest(ctx, r.dst.Bucket, r.dst.Prefix, m); err != nil {
		return nil, fmt.Errorf("publish manifest: %w", err)
	}
	return m, nil
}

// close closes every sink and returns what the run wrote and counted, as a manifest not yet written.
func (r *run) close(ctx context.Context, started time.Time) (*sinks.Manifest, error) {
	m := &sinks.Manifest{
		FHIRVersion:   schema.FHIRVersion,
		SchemaVersion: schema.Version,
		Validator:     r.opts.validator(),
		RunID:         r.opts.RunID,
		Started:       started,
		Source:        r.src.Name,
		Inputs:        r.inputs,
	}
	resources := map[string]*sinks.ResourceStats{}
	resource := func(typ string) *sinks.ResourceStats {
		rs, ok := resources[typ]
		if !ok {
			rs = &sinks.ResourceStats{}
			resources[typ] = rs
		}
		return rs
	}
	closing := time.Now()
	// Closing a table writes its last row group: the tables close side by side, one per worker, those that hold
	// the most first, so that the last to finish is a small one.
	types := slices.Sorted(maps.Keys(r.tables))
	order := make([]int, len(types)) // indices of types, in the order of closing
	for i := range order {
		order[i] = i
	}
	held := func(i int) int64 { return r.tables[types[i]].Held() }
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(held(b), held(a)) })
	closed := make([][]sinks.File, len(types))
	errs := make([]error, len(types))
	var g errgroup.Group
	g.SetLimit(r.opts.Workers)
	for _, i := range order {
		g.Go(func() error {
			closed[i], errs[i] = r.tables[types[i]].Close(ctx)
			return nil
		})
	}
	_ = g.Wait()
	var closeErr error
	for i, typ := range types {
		if errs[i] != nil {
			closeErr = errors.Join(closeErr, fmt.Errorf("close %s table: %w", typ, errs[i]))
			continue
		}
		rs := resource(typ)
		for _, f := range closed[i] {
			rs.Rows += f.Rows
			rs.Files = append(rs.Files, f)
		}
	}
	linkFiles, err := r.links.Close(ctx)
	if err != nil {
		closeErr = errors.Join(closeErr, fmt.Errorf("close %s table: %w", schema.LinksTable, err))
	}
	rejectFiles, err := r.rejects.Close(ctx)
	if err != nil {
		closeErr = errors.Join(closeErr, fmt.Errorf("close rejects: %w", err))
	}
	r.opts.Timings.add(phaseWrite, closing)
	if closeErr != nil {
		r.abort()
		return nil, closeErr
	}
	m.Rejects = rejectFiles
	for _, f := range linkFiles {
		m.Totals.Links += f.Rows
	}
	m.PatientLinks = linkFiles
	m.BlockIssues = r.blockIssues
	m.Totals.BlockIssues = r.blockIssuesTotal
	sort.SliceStable(m.BlockIssues, func(i, j int) bool {
		a, b := m.BlockIssues[i], m.BlockIssues[j]
		return a.Object < b.Object || a.Object == b.Object && (a.Line < b.Line || a.Line == b.Line && a.Offset < b.Offset)
	})

	for typ, s := range r.stats {
		if typ == "" {
			m.Totals.Unparsed += s.rejected
		} else {
			rs := resource(typ)
			rs.Lines += s.valid + s.rejected
			rs.Valid += s.valid
			rs.Rejected += s.rejected
			rs.Duplicates += s.duplicates
			rs.Links += s.links
			rs.ValidByReference += s.validByReference
		}
		m.Totals.Valid += s.valid
		m.Totals.ValidByReference += s.validByReference
		m.Totals.Rejected += s.rejected
		m.Totals.Duplicates += s.duplicates
	}
	m.Resources = make(map[string]sinks.ResourceStats, len(resources))
	for typ, rs := range resources {
		m.Resources[typ] = *rs
		m.Totals.Rows += rs.Rows
	}
	for _, in := range r.inputs {
		m.Totals.Lines += in.Lines
		if in.Error != "" {
			m.Totals.RejectedInputs++
		}
	}
	return m, nil
}

// checkTotals checks that every line is counted once and every valid line written once.
func checkTotals(m *sinks.Manifest) error {
	if m.Totals.Lines != m.Totals.Valid+m.Totals.Rejected {
		return fmt.Errorf("lines do not add up: %d read, %d valid + %d rejected",
			m.Totals.Lines, m.Totals.Valid, m.Totals.Rejected)
	}
	if m.Totals.Rows != m.Totals.Valid-m.Totals.Duplicates {
		return fmt.Errorf("rows do not add up: %d written, %d valid - %d duplicates",
			m.Totals.Rows, m.Totals.Valid, m.Totals.Duplicates)
	}
	return nil
}

// keepOf is the set of files m lists: tables, links and rejects, relative to the output.
func keepOf(m *sinks.Manifest) map[string]bool {
	keep := map[string]bool{}
	for _, rs := range m.Resources {
		for _, f := range rs.Files {
			keep[f.Key] = true
		}
	}
	for _, f := range m.PatientLinks {
		keep[f.Key] = true
	}
	for _, f := range m.Rejects {
		keep[f.Key] = true
	}
	return keep
}

func (r *run) reportProgress(ctx context.Context, total int, started time.Time) (stop func()) {
	if r.opts.Progress == nil {
		return func() {}
	}
	snapshot := func() Progress {
		return Progress{
			ObjectsDone: int(r.objectsDone.Load()), ObjectsTotal: total,
			Lines: r.lines.Load(), Rejected: r.rejected.Load(),
			BytesRead: r.bytesRead.Load(), BytesTotal: r.bytesTotal,
			Elapsed:    r.opts.Now().Sub(started),
			DedupeKeys: r.seen.keys.Load(), DedupeBytes: r.seen.mem.Load(), DedupeSpilled: r.spill.spilled(),
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.opts.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				r.opts.Progress(snapshot())
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		r.opts.Progress(snapshot())
	}
}
