package sinks

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// A run spread over the tasks of a Cloud Run job keeps, beside the ledger entry of the run:
//
//	OUT/_runs/<run_id>/plan.json              the plan every task follows (its owner's encoding), created once
//	OUT/_runs/<run_id>/tasks/<index>.json     a task's record (TaskRecord), written when its splits are converted
//	OUT/_runs/<run_id>/tasks/<index>.keys/<Type>   the dedupe keys of the rows it wrote from per-Patient objects
//
// Whichever task finds all records merges them into the run's manifest. Like the ledger, these keys start with
// "_", so that neither reader.List nor RemoveStale touches them.

// TaskRecord is what one task of a spread run converted: a partial manifest (its counts, files, inputs per split,
// rejects, links, block issues), and the files of its dedupe keys per resource type.
type TaskRecord struct {
	RunID string `json:"run_id"`
	Task  int    `json:"task"`
	Tasks int    `json:"tasks"`
	// Plan identifies the plan the task followed (a hash of it); records of another plan are not merged.
	Plan     string   `json:"plan"`
	Manifest Manifest `json:"manifest"`
	// Keys maps a resource type to the key (relative to out) of the sorted dedupe keys of the rows the task wrote
	// from per-Patient objects, and their count.
	Keys map[string]File `json:"keys,omitempty"`
}

func tasksDir(out, runID string) string { return runKey(out, runID, "tasks/") }

// TaskRecordKey is the key, relative to out, of task's record.
func TaskRecordKey(runID string, task int) string {
	return runsDir + runID + "/tasks/" + strconv.Itoa(task) + ".json"
}

// WriteTaskRecord writes rec (replacing an earlier one of the same task).
func WriteTaskRecord(ctx context.Context, b *blob.Bucket, out string, rec *TaskRecord) error {
	data, err := encodeJSON(rec)
	if err != nil {
		return fmt.Errorf("encode task record %d: %w", rec.Task, err)
	}
	if err := writeObject(ctx, b, ObjectKey(out, TaskRecordKey(rec.RunID, rec.Task)), jsonType, data); err != nil {
		return fmt.Errorf("record task %d of run %s: %w", rec.Task, rec.RunID, err)
	}
	return nil
}

// ReadTaskRecord reads the record of task. When there is none, the error wraps os.ErrNotExist.
func ReadTaskRecord(ctx context.Context, b *blob.Bucket, out, runID string, task int) (*TaskRecord, error) {
	var rec TaskRecord
	if err := readJSON(ctx, b, ObjectKey(out, TaskRecordKey(runID, task)), &rec); err != nil {
		return nil, fmt.Errorf("read task record %d: %w", task, err)
	}
	return &rec, nil
}

// ReadTaskRecords reads every task record of the run, ordered by task.
func ReadTaskRecords(ctx context.Context, b *blob.Bucket, out, runID string) ([]*TaskRecord, error) {
	prefix := tasksDir(out, runID)
	it := b.List(&blob.ListOptions{Prefix: prefix, Delimiter: "/"})
	var recs []*TaskRecord
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list task records of run %s: %w", runID, err)
		}
		name := strings.TrimPrefix(obj.Key, prefix)
		idx, ok := strings.CutSuffix(name, ".json")
		if obj.IsDir || !ok {
			continue
		}
		task, err := strconv.Atoi(idx)
		if err != nil || task < 0 {
			continue
		}
		rec, err := ReadTaskRecord(ctx, b, out, runID, task)
		if errors.Is(err, os.ErrNotExist) {
			continue // replaced between the list and the read
		}
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b *TaskRecord) int { return a.Task - b.Task })
	return recs, nil
}

// CreatePlan stores plan as the run's plan unless one is stored already, and returns the stored plan: the one
// given, or the one another task stored first.
func CreatePlan(ctx context.Context, b *blob.Bucket, out, runID string, plan []byte) ([]byte, error) {
	err := createObject(ctx, b, runKey(out, runID, "plan.json"), plan)
	if err == nil {
		return plan, nil
	}
	if !errors.Is(err, ErrRunClaimed) {
		return nil, fmt.Errorf("record plan of run %s: %w", runID, err)
	}
	return ReadPlan(ctx, b, out, runID)
}

// ReadPlan reads the run's plan. When there is none, the error wraps os.ErrNotExist.
func ReadPlan(ctx context.Context, b *blob.Bucket, out, runID string) ([]byte, error) {
	key := runKey(out, runID, "plan.json")
	data, err := b.ReadAll(ctx, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, fmt.Errorf("read plan of run %s: %w", runID, errors.Join(os.ErrNotExist, err))
	}
	if err != nil {
		return nil, fmt.Errorf("read plan of run %s: %w", runID, err)
	}
	return data, nil
}

// Key is a 128-bit dedupe key of a resource version.
type Key [2]uint64

// Compare orders keys.
func (k Key) Compare(o Key) int {
	if c := cmpU64(k[0], o[0]); c != 0 {
		return c
	}
	return cmpU64(k[1], o[1])
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TaskKeysFile is where a task's keys of typ go, each once and sorted, for the merge:
// _runs/<run_id>/tasks/<index>.keys/<Type>.
func TaskKeysFile(runID string, task int, typ string) (string, error) {
	if !isTypeName(typ) {
		return "", fmt.Errorf("write keys: %q is not a resource type", typ)
	}
	return runsDir + runID + "/tasks/" + strconv.Itoa(task) + ".keys/" + typ, nil
}

// TaskSpillPrefix starts the names of the files a task spills keys to while it converts (pipeline):
// _runs/<run_id>/tasks/<index>.spill-.
func TaskSpillPrefix(runID string, task int) string {
	return runsDir + runID + "/tasks/" + strconv.Itoa(task) + ".spill-"
}

// WriteKeyFile writes keys, sorted, 16 bytes each, to out/rel, where rel starts with "_" (neither a table part
// nor a reject file, so that RemoveStale leaves it alone), and returns the File.
func WriteKeyFile(ctx context.Context, b *blob.Bucket, out, rel string, keys []Key) (File, error) {
	slices.SortFunc(keys, Key.Compare)
	w, err := CreateKeys(ctx, b, out, rel, int64(16*len(keys)))
	if err != nil {
		return File{}, err
	}
	for _, k := range keys {
		if err := w.Write(k); err != nil {
			w.Abort()
			return File{}, err
		}
	}
	return w.Close(ctx)
}

// KeyWriter writes a key file as a stream of keys in order, 16 bytes each, committed by Close.
type KeyWriter struct {
	rel  string
	o    *object
	stop func() error
	bw   *bufio.Writer
	n    int64 // keys written
	last Key
	rec  [16]byte
}

// keyWriteBuffer is a KeyWriter's buffer, and the most its object's upload buffer takes.
const keyWriteBuffer = 64 << 10

// CreateKeys starts the key file out/rel, where rel starts with "_", for about size bytes of keys.
func CreateKeys(ctx context.Context, b *blob.Bucket, out, rel string, size int64) (*KeyWriter, error) {
	if !strings.HasPrefix(rel, "_") {
		return nil, fmt.Errorf("write keys: %q does not start with _", rel)
	}
	o, err := openObject(ctx, b, ObjectKey(out, rel), "application/octet-stream", uploadBufferFor(min(size, 1<<20)))
	if err != nil {
		return nil, err
	}
	return &KeyWriter{rel: rel, o: o, stop: o.watch(ctx), bw: bufio.NewWriterSize(o.w, keyWriteBuffer)}, nil
}

// Write appends k, which must not be less than the key before it.
func (w *KeyWriter) Write(k Key) error {
	if w.n > 0 && k.Compare(w.last) < 0 {
		return fmt.Errorf("write keys %s: the key at byte %d is out of order", w.rel, 16*w.n)
	}
	binary.BigEndian.PutUint64(w.rec[:8], k[0])
	binary.BigEndian.PutUint64(w.rec[8:], k[1])
	if _, err := w.bw.Write(w.rec[:]); err != nil {
		return fmt.Errorf("write keys %s: %w", w.rel, err)
	}
	w.last = k
	w.n++
	return nil
}

// Close commits the file and returns it.
func (w *KeyWriter) Close(ctx context.Context) (File, error) {
	err := w.bw.Flush()
	if serr := w.stop(); err == nil {
		err = serr
	}
	if err != nil {
		w.o.abort()
		return File{}, fmt.Errorf("write keys %s: %w", w.rel, err)
	}
	if err := w.o.commit(ctx); err != nil {
		return File{}, err
	}
	return File{Key: w.rel, Rows: w.n, Bytes: 16 * w.n}, nil
}

// Abort discards the file.
func (w *KeyWriter) Abort() {
	w.stop()
	w.o.abort()
}

// KeyReader streams the keys of a key file a KeyWriter wrote, in their (sorted) order, holding one buffer of them.
type KeyReader struct {
	name string
	r    *blob.Reader
	br   *bufio.Reader
	last Key
	n    int64 // keys read
	rec  [16]byte
}

// keyReadBuffer is a KeyReader's buffer: a merge holds one per task that wrote keys of the type it merges.
const keyReadBuffer = 64 << 10

// OpenKeys opens the key file f for reading.
func OpenKeys(ctx context.Context, b *blob.Bucket, out string, f File) (*KeyReader, error) {
	r, err := b.NewReader(ctx, ObjectKey(out, f.Key), nil)
	if err != nil {
		return nil, fmt.Errorf("read keys %s: %w", f.Key, err)
	}
	return &KeyReader{name: f.Key, r: r, br: bufio.NewReaderSize(r, keyReadBuffer)}, nil
}

// Next returns the next key; ok is false after the last. A file that is not a whole number of keys, or whose keys
// are out of order, is an error: a merge relies on the order.
func (k *KeyReader) Next() (key Key, ok bool, err error) {
	switch n, err := io.ReadFull(k.br, k.rec[:]); {
	case err == io.EOF:
		return Key{}, false, nil
	case err == io.ErrUnexpectedEOF:
		return Key{}, false, fmt.Errorf("read keys %s: the %d bytes at byte %d are not a whole key", k.name, n, 16*k.n)
	case err != nil:
		return Key{}, false, fmt.Errorf("read keys %s: %w", k.name, err)
	}
	key = Key{binary.BigEndian.Uint64(k.rec[:8]), binary.BigEndian.Uint64(k.rec[8:])}
	if k.n > 0 && key.Compare(k.last) < 0 {
		return Key{}, false, fmt.Errorf("read keys %s: the key at byte %d is out of order", k.name, 16*k.n)
	}
	k.last = key
	k.n++
	return key, true, nil
}

// Close closes the file.
func (k *KeyReader) Close() error { return k.r.Close() }

// RecordsComplete reports whether recs hold one record of each of tasks tasks, all of plan.
func RecordsComplete(recs []*TaskRecord, tasks int, plan string) bool {
	seen := make([]bool, tasks)
	n := 0
	for _, r := range recs {
		if r.Plan != plan || r.Task < 0 || r.Task >= tasks || seen[r.Task] {
			continue
		}
		seen[r.Task] = true
		n++
	}
	return n == tasks
}

// rewriteKey is where a merge records the parts it rewrote of one (task, type): a later merge (a retry, or a
// second task merging) takes them from there, since the parts they replace may be gone.
func rewriteKey(out, runID string, task int, typ string) string {
	return runKey(out, runID, "tasks/"+strconv.Itoa(task)+".rewritten/"+typ+".json")
}

// WriteRewritten records the parts a merge wrote in place of task's parts of typ.
func WriteRewritten(ctx context.Context, b *blob.Bucket, out, runID string, task int, typ string, files []File) error {
	data, err := encodeJSON(files)
	if err != nil {
		return fmt.Errorf("encode rewritten %s parts of task %d: %w", typ, task, err)
	}
	if err := writeObject(ctx, b, rewriteKey(out, runID, task, typ), jsonType, data); err != nil {
		return fmt.Errorf("record rewritten %s parts of task %d: %w", typ, task, err)
	}
	return nil
}

// ReadRewritten reads what WriteRewritten recorded. When there is nothing, the error wraps os.ErrNotExist.
func ReadRewritten(ctx context.Context, b *blob.Bucket, out, runID string, task int, typ string) ([]File, error) {
	var files []File
	if err := readJSON(ctx, b, rewriteKey(out, runID, task, typ), &files); err != nil {
		return nil, fmt.Errorf("read rewritten %s parts of task %d: %w", typ, task, err)
	}
	return files, nil
}
