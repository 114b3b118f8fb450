package pipeline

import (
	"cmp"
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/schema"
	"github.com/fhirlake/fhirlake/sinks"
)

// TaskResult is how one task of a spread run ended.
type TaskResult struct {
	// Record is what this task converted (read back when an earlier attempt of the task had finished).
	Record *sinks.TaskRecord
	// Manifest is the run's manifest when this task published it, or found it published; nil while other tasks
	// have not finished.
	Manifest *sinks.Manifest
	// Already is true when the run was published before this task started: nothing was done.
	Already bool
	// Resumed is true when an earlier attempt of this task had recorded its splits: they were not converted again.
	Resumed bool
}

// RunTask does task's share of a run spread over plan.Tasks processes (a Cloud Run job's tasks): it converts the
// splits the plan gives it into part files of its own (<Type>/part-t0003-NNNNN.parquet, _rejects/<name>-t0003.ndjson,
// _patient_links/part-t0003-NNNNN.parquet), records them in _runs/<run_id>/tasks/<task>.json, and, when it then
// finds a record of every task, merges them and publishes the run's manifest.
//
// A task run again (a retry) overwrites only its own parts; one whose record of the same plan exists converts
// nothing and goes on to the merge. The merge depends only on the records, so tasks merging at once write the same
// bytes. A run into an output holding this run's manifest does nothing; one holding another run of the same source
// unpublishes it first; one holding another source's fails with ErrForeignOutput.
//
// Per-Patient objects: each task writes a resource of them once (within the task, as Run does), and the merge
// removes the copies that several tasks wrote: it keeps the copy of the lowest task and rewrites the other tasks'
// parts of that type without theirs (mergeDuplicates).
func RunTask(ctx context.Context, src Source, dst Sink, plan *Plan, task int, opts Options) (*TaskResult, error) {
	if task < 0 || task >= plan.Tasks {
		return nil, fmt.Errorf("task %d of a plan of %d tasks", task, plan.Tasks)
	}
	opts = opts.withDefaults()
	opts.RunID = plan.RunID
	hash := plan.Hash()

	prev, err := sinks.ReadManifest(ctx, dst.Bucket, dst.Prefix)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read previous manifest: %w", err)
	case prev.Source != plan.Source:
		return nil, fmt.Errorf("%w: it holds %q, this run reads %q", ErrForeignOutput, prev.Source, plan.Source)
	case prev.RunID == plan.RunID:
		return &TaskResult{Manifest: prev, Already: true}, nil
	default:
		if err := sinks.Unpublish(ctx, dst.Bucket, dst.Prefix); err != nil {
			return nil, fmt.Errorf("unpublish previous run: %w", err)
		}
	}

	res := &TaskResult{}
	rec, err := sinks.ReadTaskRecord(ctx, dst.Bucket, dst.Prefix, plan.RunID, task)
	switch {
	case err == nil && rec.Plan == hash:
		res.Resumed = true
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, err
	default:
		if rec, err = convertTask(ctx, src, dst, plan, task, hash, opts); err != nil {
			return nil, err
		}
	}
	res.Record = rec

	recs, err := sinks.ReadTaskRecords(ctx, dst.Bucket, dst.Prefix, plan.RunID)
	if err != nil {
		return nil, err
	}
	if !sinks.RecordsComplete(recs, plan.Tasks, hash) {
		return res, nil
	}
	if res.Manifest, err = mergeTasks(ctx, dst, plan, hash, recs, opts); err != nil {
		return nil, err
	}
	return res, nil
}

// convertTask converts task's splits and records them.
func convertTask(ctx context.Context, src Source, dst Sink, plan *Plan, task int, hash string, opts Options) (*sinks.TaskRecord, error) {
	started := opts.Now().UTC()
	reg, err := schema.New(schema.Options{RecursionDepth: opts.RecursionDepth})
	if err != nil {
		return nil, fmt.Errorf("build schemas: %w", err)
	}
	splits := plan.TaskSplits(task)
	objects := make([]reader.Object, len(splits))
	for i, s := range splits {
		objects[i] = reader.Object{Key: s.Key, Size: s.End - s.Start, Layout: s.Layout}
	}
	opts.Parquet.PartPrefix = sinks.PartPrefixFor(task, false)
	r := &run{
		src:     src,
		dst:     dst,
		opts:    opts,
		reg:     reg,
		tables:  map[string]*sinks.Table{},
		rejects: sinks.NewTaskRejects(dst.Bucket, dst.Prefix, task),
		inputs:  make([]sinks.Input, len(objects)),
		stats:   map[string]*typeStats{},
		seen:    newKeySet(opts.DedupeKeys),
		links:   sinks.NewTable(dst.Bucket, dst.Prefix, schema.LinksTable, schema.Links(), opts.Parquet),
		splits:  splits,
	}
	// The task's keys go to the bucket as it writes: the files an earlier attempt of this task left are stale.
	spill := sinks.TaskSpillPrefix(plan.RunID, task)
	if r.keys, err = newKeySpill(ctx, dst, spill, spill); err != nil {
		return nil, err
	}
	for _, o := range objects {
		r.bytesTotal += o.Size
	}
	if err := r.convert(ctx, objects, started); err != nil {
		r.abort()
		return nil, err
	}
	m, err := r.close(ctx, started)
	if err != nil {
		return nil, err
	}
	// Past Options.DedupeKeys the task wrote some resources more than once: its keys show which.
	// The same reading of its spilled keys writes each once to its key file of the type, for the merge.
	keys, err := r.reconcile(ctx, r.keys, m, sinks.TaskRewrittenPrefix(task), func(typ string) (string, error) {
		return sinks.TaskKeysFile(plan.RunID, task, typ)
	})
	if err != nil {
		return nil, fmt.Errorf("task %d: %w", task, err)
	}
	m.RunID = plan.RunID
	m.Finished = opts.Now().UTC()
	rec := &sinks.TaskRecord{RunID: plan.RunID, Task: task, Tasks: plan.Tasks, Plan: hash, Manifest: *m, Keys: keys}
	if err := r.keys.remove(ctx); err != nil {
		return nil, err
	}
	if err := sinks.WriteTaskRecord(ctx, dst.Bucket, dst.Prefix, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// normalVersion is the version as a table stores it: meta.versionId verbatim, meta.lastUpdated (an instant, which
// a versionId can never look like) as its UTC microseconds.
func normalVersion(v string) string {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return "@" + strconv.FormatInt(t.UnixMicro(), 10)
	}
	return v
}

func dedupeKey(typ, id, version string) sinks.Key {
	h := sha256.New()
	h.Write([]byte(typ))
	h.Write([]byte{0})
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(version))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sinks.Key{binary.BigEndian.Uint64(sum[:8]), binary.BigEndian.Uint64(sum[8:16])}
}

// mergeTasks merges the records of every task into the run's manifest, removes per-Patient duplicates across
// tasks, removes stale files and publishes. It reads nothing but the records, the key files and the parts it
// rewrites, and sorts everything, so that every task merging the same records writes the same bytes.
func mergeTasks(ctx context.Context, dst Sink, plan *Plan, hash string, recs []*sinks.TaskRecord, opts Options) (*sinks.Manifest, error) {
	byTask := make([]*sinks.TaskRecord, plan.Tasks)
	for _, r := range recs {
		if r.Plan == hash && r.Task >= 0 && r.Task < plan.Tasks {
			byTask[r.Task] = r
		}
	}
	m := &sinks.Manifest{
		FHIRVersion: schema.FHIRVersion, SchemaVersion: schema.Version, Validator: opts.validator(),
		RunID: plan.RunID, Source: plan.Source, Resources: map[string]sinks.ResourceStats{},
	}
	splitInputs := map[string][]sinks.Input{}
	for _, r := range byTask {
		tm := r.Manifest
		if m.Started.IsZero() || tm.Started.Before(m.Started) {
			m.Started = tm.Started
		}
		if tm.Finished.After(m.Finished) {
			m.Finished = tm.Finished
		}
		m.Totals.Valid += tm.Totals.Valid
		m.Totals.ValidByReference += tm.Totals.ValidByReference
		m.Totals.Rejected += tm.Totals.Rejected
		m.Totals.Duplicates += tm.Totals.Duplicates
		m.Totals.Links += tm.Totals.Links
		m.Totals.BlockIssues += tm.Totals.BlockIssues
		m.Totals.Unparsed += tm.Totals.Unparsed
		for typ, s := range tm.Resources {
			rs := m.Resources[typ]
			rs.Lines += s.Lines
			rs.Valid += s.Valid
			rs.Rejected += s.Rejected
			rs.Duplicates += s.Duplicates
			rs.Links += s.Links
			rs.ValidByReference += s.ValidByReference
			rs.Files = append(rs.Files, s.Files...)
			m.Resources[typ] = rs
		}
		m.Rejects = append(m.Rejects, tm.Rejects...)
		m.PatientLinks = append(m.PatientLinks, tm.PatientLinks...)
		m.BlockIssues = append(m.BlockIssues, tm.BlockIssues...)
		for _, in := range tm.Inputs {
			splitInputs[in.Object] = append(splitInputs[in.Object], in)
		}
	}
	for _, o := range plan.Objects {
		in := sinks.Input{Object: o.Key, Bytes: o.Size}
		for _, s := range splitInputs[o.Key] {
			in.Lines += s.Lines
			in.Blocks += s.Blocks
			in.Headers += s.Headers
			in.Layout = cmp.Or(in.Layout, s.Layout)
			in.Error = cmp.Or(in.Error, s.Error)
		}
		m.Inputs = append(m.Inputs, in)
		m.Totals.Lines += in.Lines
		if in.Error != "" {
			m.Totals.RejectedInputs++
		}
	}

	if err := mergeDuplicates(ctx, dst, plan, byTask, m, opts); err != nil {
		return nil, err
	}

	byKey := func(a, b sinks.File) int { return cmp.Compare(a.Key, b.Key) }
	for typ, rs := range m.Resources {
		slices.SortFunc(rs.Files, byKey)
		rs.Rows = 0
		for _, f := range rs.Files {
			rs.Rows += f.Rows
		}
		m.Resources[typ] = rs
		m.Totals.Rows += rs.Rows
	}
	slices.SortFunc(m.Rejects, byKey)
	slices.SortFunc(m.PatientLinks, byKey)
	slices.SortStableFunc(m.BlockIssues, func(a, b sinks.BlockIssue) int {
		return cmp.Or(cmp.Compare(a.Object, b.Object), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Offset, b.Offset),
			cmp.Compare(a.Reason, b.Reason))
	})
	if err := checkTotals(m); err != nil {
		return nil, fmt.Errorf("merge tasks of run %s: %w", plan.RunID, err)
	}
	if _, err := sinks.RemoveStale(ctx, dst.Bucket, dst.Prefix, keepOf(m)); err != nil {
		return nil, fmt.Errorf("remove stale output: %w", err)
	}
	if opts.Annotate != nil {
		opts.Annotate(m)
	}
	if err := sinks.WriteManifest(ctx, dst.Bucket, dst.Prefix, m); err != nil {
		return nil, fmt.Errorf("publish manifest: %w", err)
	}
	return m, nil
}

// mergeDuplicates finds the resources of per-Patient objects that more than one task wrote (shared resources:
// Organization, Practitioner, Medication ... that blocks read by different tasks repeat), keeps the copy of the
// lowest task, and rewrites the parts of the other tasks' tables of that type without theirs, as
// <Type>/part-t0003-d-NNNNN.parquet. It updates m: the files, and the duplicates counted.
//
// Its cost: reading every task's key files (16 bytes per row written from per-Patient objects), and reading and
// writing again the parts of the (task, type) pairs that hold a duplicate; in a per-Patient export those are the
// shared types, a small part of the data. The rewritten parts' keys and bytes depend only on the records, so
// concurrent merges write the same objects, and each (task, type) rewritten is recorded (sinks.WriteRewritten)
// before stale parts are removed, so that a merge after another takes the new parts instead of reading the removed
// ones. (A merge that read an old part's list just before another merge removed it fails, and its retry finds the
// run published.)
func mergeDuplicates(ctx context.Context, dst Sink, plan *Plan, byTask []*sinks.TaskRecord, m *sinks.Manifest, opts Options) error {
	types := map[string]bool{}
	for _, r := range byTask {
		for typ := range r.Keys {
			types[typ] = true
		}
	}
	for _, typ := range slices.Sorted(maps.Keys(types)) {
		holders := 0
		for _, r := range byTask {
			if _, ok := r.Keys[typ]; ok {
				holders++
			}
		}
		if holders < 2 {
			continue
		}
		drop, rows, err := readDuplicates(ctx, dst, byTask, typ)
		if err != nil {
			return err
		}
		var dups int64
		for _, n := range rows {
			dups += n
		}
		if dups == 0 {
			continue
		}
		rs := m.Resources[typ]
		var files []sinks.File
		for t, r := range byTask {
			own := r.Manifest.Resources[typ].Files
			if drop[t] == nil {
				files = append(files, own...)
				continue
			}
			rewritten, err := sinks.ReadRewritten(ctx, dst.Bucket, dst.Prefix, plan.RunID, t, typ)
			if errors.Is(err, fs.ErrNotExist) {
				rewritten, err = rewrite(ctx, dst, plan.RunID, typ, t, own, drop[t], rows[t], opts)
			}
			if err != nil {
				return err
			}
			files = append(files, rewritten...)
		}
		rs.Files = files
		rs.Duplicates += dups
		m.Resources[typ] = rs
		m.Totals.Duplicates += dups
	}
	return nil
}

// readDuplicates streams the key files of typ of every task that has one (duplicateKeys).
func readDuplicates(ctx context.Context, dst Sink, byTask []*sinks.TaskRecord, typ string) ([]map[sinks.Key]bool, []int64, error) {
	var files []sinks.File
	var tasks []int
	for t, r := range byTask {
		if f, ok := r.Keys[typ]; ok {
			files, tasks = append(files, f), append(tasks, t)
		}
	}
	srcs, done, err := openKeyFiles(ctx, dst, files)
	if err != nil {
		return nil, nil, err
	}
	defer done()
	return duplicateKeys(srcs, tasks, len(byTask))
}

// openKeyFiles opens key files as sources, in order; done closes them.
func openKeyFiles(ctx context.Context, dst Sink, files []sinks.File) (srcs []keySource, done func(), err error) {
	readers := make([]*sinks.KeyReader, 0, len(files))
	done = func() {
		for _, kr := range readers {
			kr.Close()
		}
	}
	for _, f := range files {
		kr, err := sinks.OpenKeys(ctx, dst.Bucket, dst.Prefix, f)
		if err != nil {
			done()
			return nil, nil, err
		}
		readers, srcs = append(readers, kr), append(srcs, kr)
	}
	return srcs, done, nil
}

// keySource yields one task's keys of one type in order (sinks.KeyReader).
type keySource interface {
	Next() (sinks.Key, bool, error)
}

// duplicateKeys merges the sorted keys of srcs, those of tasks[i] (ascending) in srcs[i], and returns, for each of
// n tasks, the keys that a lower task also wrote (nil where none), and how many of the task's rows hold them (a
// task writes each key once, but a key its file holds twice is two rows). It holds one key per source and the
// duplicates, not every key: a map of every task's keys of the type took 35 to 56 bytes a key (Go 1.26's map,
// 0.3 to 3 million keys).
func duplicateKeys(srcs []keySource, tasks []int, n int) ([]map[sinks.Key]bool, []int64, error) {
	drop, rows := make([]map[sinks.Key]bool, n), make([]int64, n)
	err := mergeKeys(srcs, tasks, func(k sinks.Key, held []keyCount) {
		for _, h := range held[1:] { // held[0] is the lowest task that holds k: it keeps its rows
			if drop[h.task] == nil {
				drop[h.task] = map[sinks.Key]bool{}
			}
			drop[h.task][k] = true
			rows[h.task] += h.rows
		}
	})
	if err != nil {
		return nil, nil, err
	}
	return drop, rows, nil
}

// keyCount is how many times a source holds a key, and the task it is of.
type keyCount struct {
	task int
	rows int64
}

// rowsOf is how many times the sources hold a key, together.
func rowsOf(held []keyCount) int64 {
	var n int64
	for _, h := range held {
		n += h.rows
	}
	return n
}

// mergeKeys reads the sorted keys of srcs (srcs[i] those of tasks[i], ascending; tasks nil: of task i) together in
// key order, and calls each once per distinct key with the sources that hold it, lowest task first. It holds one
// key per source.
func mergeKeys(srcs []keySource, tasks []int, each func(sinks.Key, []keyCount)) error {
	h := make(keyHeap, 0, len(srcs))
	for i, src := range srcs {
		k, ok, err := src.Next()
		if err != nil {
			return err
		}
		task := i
		if tasks != nil {
			task = tasks[i]
		}
		if ok {
			h = append(h, keyHead{key: k, task: task, src: src})
		}
	}
	heap.Init(&h)
	var held []keyCount
	for len(h) > 0 {
		k := h[0].key
		held = held[:0]
		for len(h) > 0 && h[0].key == k { // the heap orders equal keys by task
			e := &h[0]
			c := keyCount{task: e.task}
			next, ok, err := k, true, error(nil)
			for ok && next == k {
				c.rows++
				if next, ok, err = e.src.Next(); err != nil {
					return err
				}
			}
			held = append(held, c)
			if ok {
				e.key = next
				heap.Fix(&h, 0)
			} else {
				heap.Pop(&h)
			}
		}
		each(k, held)
	}
	return nil
}

// keyHead is the next key of one source; keyHeap orders them by key, then task.
type keyHead struct {
	key  sinks.Key
	task int
	src  keySource
}

type keyHeap []keyHead

func (h keyHeap) Len() int { return len(h) }
func (h keyHeap) Less(i, j int) bool {
	if c := h[i].key.Compare(h[j].key); c != 0 {
		return c < 0
	}
	return h[i].task < h[j].task
}
func (h keyHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *keyHeap) Push(x any)   { *h = append(*h, x.(keyHead)) }
func (h *keyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// rewrite writes task's parts of typ again without the rows of drop (rows of them), and records the new parts
// before any of the old ones is removed, so that a later merge finds them.
func rewrite(ctx context.Context, dst Sink, runID, typ string, task int, files []sinks.File, drop map[sinks.Key]bool, rows int64, opts Options) ([]sinks.File, error) {
	rewritten, dropped, err := rewriteWithout(ctx, dst, typ, task, files, drop, opts)
	if err != nil {
		return nil, err
	}
	if dropped != rows {
		return nil, fmt.Errorf("merge %s duplicates of task %d: %d rows found of %d", typ, task, dropped, rows)
	}
	if err := sinks.WriteRewritten(ctx, dst.Bucket, dst.Prefix, runID, task, typ, rewritten); err != nil {
		return nil, err
	}
	return rewritten, nil
}

// rewriteWithout copies the parts files of task's typ table into new parts without the rows whose key is in drop,
// and returns the new parts and the rows dropped.
func rewriteWithout(ctx context.Context, dst Sink, typ string, task int, files []sinks.File, drop map[sinks.Key]bool, opts Options) ([]sinks.File, int64, error) {
	popts := opts.Parquet
	popts.PartPrefix = sinks.PartPrefixFor(task, true)
	out, dropped, err := rewriteParts(ctx, dst, typ, files, func(k sinks.Key) bool { return drop[k] }, popts, opts)
	if err != nil {
		return nil, 0, fmt.Errorf("rewrite %s of task %d: %w", typ, task, err)
	}
	return out, dropped, nil
}

// rewriteParts copies the parts files of a typ table, in order, into new parts of popts without the rows for
// whose dedupe key gone says so, and returns the new parts and the rows dropped.
func rewriteParts(ctx context.Context, dst Sink, typ string, files []sinks.File, gone func(sinks.Key) bool, popts sinks.ParquetOptions, opts Options) ([]sinks.File, int64, error) {
	var tbl *sinks.Table
	var dropped int64
	for _, f := range files {
		err := readParts(ctx, dst, f.Key, opts, func(rec arrow.Record) error {
			if tbl == nil {
				tbl = sinks.NewTable(dst.Bucket, dst.Prefix, typ, rec.Schema(), popts)
			}
			keep, err := rowsToKeep(typ, rec, gone)
			if err != nil {
				return fmt.Errorf("dedupe %s: %w", f.Key, err)
			}
			for _, run := range keep {
				part := rec.NewSlice(run[0], run[1])
				err := tbl.Write(ctx, part)
				part.Release()
				if err != nil {
					return err
				}
			}
			var kept int64
			for _, run := range keep {
				kept += run[1] - run[0]
			}
			dropped += rec.NumRows() - kept
			return nil
		})
		if err != nil {
			if tbl != nil {
				tbl.Abort()
			}
			return nil, 0, err
		}
	}
	if tbl == nil {
		return nil, 0, nil
	}
	out, err := tbl.Close(ctx)
	if err != nil {
		return nil, 0, err
	}
	return out, dropped, nil
}

// rowsToKeep returns the runs [from, to) of rows of rec for whose dedupe key gone says false, asking in row order.
func rowsToKeep(typ string, rec arrow.Record, gone func(sinks.Key) bool) ([][2]int64, error) {
	s := rec.Schema()
	idIdx := s.FieldIndices("id")
	metaIdx := s.FieldIndices("meta")
	if len(idIdx) != 1 || len(metaIdx) != 1 {
		return nil, errors.New("no id or meta column")
	}
	ids, ok := rec.Column(idIdx[0]).(*array.String)
	meta, ok2 := rec.Column(metaIdx[0]).(*array.Struct)
	if !ok || !ok2 {
		return nil, errors.New("id or meta column of an unexpected type")
	}
	mt := meta.DataType().(*arrow.StructType)
	var versionIDs *array.String
	var updated *array.Timestamp
	if i, ok := mt.FieldIdx("versionId"); ok {
		versionIDs, _ = meta.Field(i).(*array.String)
	}
	if i, ok := mt.FieldIdx("lastUpdated"); ok {
		updated, _ = meta.Field(i).(*array.Timestamp)
	}
	var runs [][2]int64
	start := int64(-1)
	for i := 0; i < int(rec.NumRows()); i++ {
		version := ""
		switch {
		case meta.IsNull(i):
		case versionIDs != nil && versionIDs.IsValid(i) && versionIDs.Value(i) != "":
			version = versionIDs.Value(i)
		case updated != nil && updated.IsValid(i):
			version = "@" + strconv.FormatInt(int64(updated.Value(i)), 10)
		}
		drop := ids.IsValid(i) && gone(dedupeKey(typ, ids.Value(i), version))
		switch {
		case drop && start >= 0:
			runs = append(runs, [2]int64{start, int64(i)})
			start = -1
		case !drop && start < 0:
			start = int64(i)
		}
	}
	if start >= 0 {
		runs = append(runs, [2]int64{start, rec.NumRows()})
	}
	return runs, nil
}

// readParts reads the record batches of the Parquet object rel under dst, in order.
func readParts(ctx context.Context, dst Sink, rel string, opts Options, each func(arrow.Record) error) error {
	key := objectKey(dst, rel)
	attrs, err := dst.Bucket.Attributes(ctx, key)
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	pf, err := file.NewParquetReader(&blobReaderAt{ctx: ctx, b: dst.Bucket, key: key, size: attrs.Size})
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: int64(opts.BatchRows)}, opts.allocator())
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	rr, err := fr.GetRecordReader(ctx, nil, nil)
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	defer rr.Release()
	for rr.Next() {
		if err := each(rr.Record()); err != nil {
			return err
		}
	}
	if err := rr.Err(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	return nil
}

// blobReaderAt reads an object with range reads, as the Parquet reader wants it.
type blobReaderAt struct {
	ctx  context.Context
	b    *blob.Bucket
	key  string
	size int64
	pos  int64
}

func (r *blobReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	rr, err := r.b.NewRangeReader(r.ctx, r.key, off, int64(len(p)), nil)
	if err != nil {
		return 0, err
	}
	defer rr.Close()
	n, err := io.ReadFull(rr, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return n, err
}

func (r *blobReaderAt) Read(p []byte) (int, error) {
	n, err := r.ReadAt(p, r.pos)
	r.pos += int64(n)
	return n, err
}

func (r *blobReaderAt) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	}
	if offset < 0 {
		return 0, errors.New("seek before the start")
	}
	r.pos = offset
	return offset, nil
}
