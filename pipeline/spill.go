package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/fhirlake/fhirlake/sinks"
)

// A run of one process holds the key of every per-Patient resource version it writes (keySet), up to
// Options.DedupeKeys of them. Past that, a resource whose key the set does not hold may have been written already
// since, or may be again: it is written, and its key (dedupeKey, which a row gives again) goes to a keySpill,
// which writes the keys to the output's bucket in sorted files of spillKeys keys (Cloud Run's disk is memory). At
// its end the run reads the spilled keys of each type together in key order, finds the keys written more than
// once, and writes the parts of those types again keeping the first row of each (reconcile). So the memory stays
// bounded whatever the export, and the rows and counts are those an unbounded set gives; what it costs is 16
// bytes of the bucket per resource written past the bound, and rewriting the types whose resources were written
// twice (in a per-Patient export the shared ones: Organization, Practitioner, Location ...).
//
// A task of a spread run spills the key of every per-Patient row it writes (the merge needs them all, and holding
// them took 16 bytes a row), under sinks.TaskSpillPrefix. Its own copies past the bound are the keys those files
// hold more than once: it drops them the same way (parts sinks.TaskRewrittenPrefix). The same reading of the files
// writes each key once to the task's key file for the merge; then it removes the spilled files.

// DefaultDedupeKeys is Options.DedupeKeys when zero: about 34 MB of keys.
const DefaultDedupeKeys = 1 << 20

// spillKeys is how many spilled keys a run buffers before it writes them (16 bytes each).
var spillKeys = 1 << 16

// spillDir starts the names of the spilled keys' files, directly under the output prefix:
// _dedupe-<run>-<Type>-NNNNN. There is no directory for them: a local output keeps the directories its files
// leave, and an empty one would stay after every run past its bound. The names start with "_", so RemoveStale and
// reader.List leave them alone; a run removes its own files when it publishes, and a run of the same output
// removes what a run that died left.
const spillDir = "_dedupe-"

// oldSpillDir is where the version before spillDir spilled keys (_dedupe/<run>-<Type>-NNNNN): a run removes
// what a run of that version died leaving there.
const oldSpillDir = "_dedupe/"

// keySpill collects the keys of the resources a run wrote without holding their keys.
type keySpill struct {
	dst  Sink
	name string // the start of this run's file names: spillDir and the run's own part
	mu   sync.Mutex
	buf  map[string][]sinks.Key // by resource type, not yet written
	n    int                    // keys in buf
	runs map[string][]sinks.File
	next int // number of the next file
	// total counts the keys added, for Progress.
	total atomic.Int64
}

// newKeySpill removes what earlier runs left under each of stale and returns an empty spill whose file names
// start with name.
func newKeySpill(ctx context.Context, dst Sink, name string, stale ...string) (*keySpill, error) {
	for _, p := range stale {
		if err := removeUnder(ctx, dst, p); err != nil {
			return nil, err
		}
	}
	return &keySpill{dst: dst, name: name, buf: map[string][]sinks.Key{}, runs: map[string][]sinks.File{}}, nil
}

// runSpillName starts the names of a run's spilled files: _dedupe-<run>-.
func runSpillName(started time.Time) string {
	return spillDir + strconv.FormatInt(started.UnixNano(), 10) + "-"
}

// add records the key of a resource of typ written without its key held. The decoder that fills the buffer
// writes it out, outside the lock, so that the others go on meanwhile.
func (s *keySpill) add(ctx context.Context, typ string, k sinks.Key) error {
	s.total.Add(1)
	s.mu.Lock()
	s.buf[typ] = append(s.buf[typ], k)
	if s.n++; s.n < spillKeys {
		s.mu.Unlock()
		return nil
	}
	full, next := s.take()
	s.mu.Unlock()
	files, err := s.writeOut(ctx, full, next)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addRuns(files)
	return err
}

// spilled returns the number of keys added so far (none for a nil spill, a task's).
func (s *keySpill) spilled() int64 {
	if s == nil {
		return 0
	}
	return s.total.Load()
}

// take hands the buffered keys over with the number of their files, and starts an empty buffer. Called with mu
// held.
func (s *keySpill) take() (map[string][]sinks.Key, int) {
	buf, next := s.buf, s.next
	s.buf, s.n, s.next = map[string][]sinks.Key{}, 0, s.next+1
	return buf, next
}

// write writes out the buffered keys. Called with mu held.
func (s *keySpill) write(ctx context.Context) error {
	buf, next := s.take()
	files, err := s.writeOut(ctx, buf, next)
	s.addRuns(files)
	return err
}

// writeOut writes the keys of buf, one sorted file per type numbered next, and returns the files written (also
// when it fails part way).
func (s *keySpill) writeOut(ctx context.Context, buf map[string][]sinks.Key, next int) (map[string]sinks.File, error) {
	files := make(map[string]sinks.File, len(buf))
	for _, typ := range slices.Sorted(maps.Keys(buf)) {
		rel := fmt.Sprintf("%s%s-%05d", s.name, typ, next)
		f, err := sinks.WriteKeyFile(ctx, s.dst.Bucket, s.dst.Prefix, rel, buf[typ])
		if err != nil {
			return files, fmt.Errorf("spill %s keys: %w", typ, err)
		}
		files[typ] = f
	}
	return files, nil
}

// addRuns adds written files to the runs of their types. Called with mu held.
func (s *keySpill) addRuns(files map[string]sinks.File) {
	for typ, f := range files {
		s.runs[typ] = append(s.runs[typ], f)
	}
}

// reconcile drops, from the tables of m, the rows of the resources whose keys s holds more than once, keeping the
// first, and counts them as duplicates; it writes the parts of those types again with prefix. A type without any
// keeps its parts. When keysFile is not nil, the same reading of the spilled keys also writes each key of a type
// once to the file keysFile names (a task's key file for the merge), and reconcile returns those files by type.
func (r *run) reconcile(ctx context.Context, s *keySpill, m *sinks.Manifest, prefix string,
	keysFile func(typ string) (string, error)) (map[string]sinks.File, error) {
	if s == nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.write(ctx); err != nil {
		return nil, err
	}
	var unique map[string]sinks.File
	for _, typ := range slices.Sorted(maps.Keys(s.runs)) {
		if err := s.compact(ctx, typ); err != nil {
			return nil, err
		}
		rel := ""
		if keysFile != nil {
			var err error
			if rel, err = keysFile(typ); err != nil {
				return nil, err
			}
		}
		extra := map[sinks.Key]int64{}
		var total int64
		f, err := mergeFiles(ctx, s.dst, s.runs[typ], rel, true, func(k sinks.Key, n int64) {
			if n > 1 {
				extra[k] = n - 1
				total += n - 1
			}
		})
		if err != nil {
			return nil, fmt.Errorf("read spilled %s keys: %w", typ, err)
		}
		if rel != "" {
			if unique == nil {
				unique = map[string]sinks.File{}
			}
			unique[typ] = f
		}
		if total == 0 {
			continue
		}
		rs := m.Resources[typ]
		seen := make(map[sinks.Key]bool, len(extra))
		gone := func(k sinks.Key) bool {
			n, ok := extra[k]
			switch {
			case !ok:
				return false
			case !seen[k]:
				seen[k] = true // the first row of the key stays
				return false
			case n > 0:
				extra[k] = n - 1
				return true
			}
			return false
		}
		popts := r.opts.Parquet
		popts.PartPrefix = prefix
		files, dropped, err := rewriteParts(ctx, r.dst, typ, rs.Files, gone, popts, r.opts)
		if err != nil {
			return nil, fmt.Errorf("drop %s duplicates: %w", typ, err)
		}
		if dropped != total {
			return nil, fmt.Errorf("drop %s duplicates: %d rows found of %d", typ, dropped, total)
		}
		rs.Files = files
		rs.Rows -= dropped
		rs.Duplicates += dropped
		m.Resources[typ] = rs
		m.Totals.Rows -= dropped
		m.Totals.Duplicates += dropped
	}
	return unique, nil
}

// mergeFan is the most spilled files of a type that a run reads at once (a 64 KiB buffer each).
var mergeFan = 64

// compact merges the spilled files of typ, mergeFan at a time, into one each, until at most mergeFan are left.
// The merged files keep every key, repeats included. Called with mu held.
func (s *keySpill) compact(ctx context.Context, typ string) error {
	files := s.runs[typ]
	for len(files) > mergeFan {
		group := files[:mergeFan]
		rel := fmt.Sprintf("%s%s-%05d", s.name, typ, s.next)
		s.next++
		f, err := mergeFiles(ctx, s.dst, group, rel, false, nil)
		if err != nil {
			return fmt.Errorf("merge spilled %s keys: %w", typ, err)
		}
		for _, g := range group {
			if err := s.dst.Bucket.Delete(ctx, objectKey(s.dst, g.Key)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				return fmt.Errorf("remove merged %s: %w", g.Key, err)
			}
		}
		files = append(files[mergeFan:], f)
	}
	s.runs[typ] = files
	return nil
}

// mergeFiles reads the keys of files together in key order and calls each, when not nil, with every key and how
// many times the files hold it. When rel is not "", it writes the keys to one file at rel, each once if unique,
// else with their repeats, and returns it.
func mergeFiles(ctx context.Context, dst Sink, files []sinks.File, rel string, unique bool,
	each func(k sinks.Key, n int64)) (sinks.File, error) {
	srcs, done, err := openKeyFiles(ctx, dst, files)
	if err != nil {
		return sinks.File{}, err
	}
	defer done()
	var w *sinks.KeyWriter
	if rel != "" {
		var size int64
		for _, f := range files {
			size += f.Bytes
		}
		if w, err = sinks.CreateKeys(ctx, dst.Bucket, dst.Prefix, rel, size); err != nil {
			return sinks.File{}, err
		}
	}
	var werr error
	err = mergeKeys(srcs, nil, func(k sinks.Key, held []keyCount) {
		n := rowsOf(held)
		if each != nil {
			each(k, n)
		}
		if w == nil {
			return
		}
		copies := n
		if unique {
			copies = 1
		}
		for range copies {
			if werr == nil {
				werr = w.Write(k)
			}
		}
	})
	if err = errors.Join(err, werr); err != nil {
		if w != nil {
			w.Abort()
		}
		return sinks.File{}, err
	}
	if w == nil {
		return sinks.File{}, nil
	}
	return w.Close(ctx)
}

// objectKey is rel's key in the bucket of dst.
func objectKey(dst Sink, rel string) string { return sinks.ObjectKey(dst.Prefix, rel) }

// remove deletes the run's spilled keys.
func (s *keySpill) remove(ctx context.Context) error {
	if s == nil {
		return nil
	}
	return removeUnder(ctx, s.dst, s.name)
}

// removeUnder deletes every object of the output whose key starts with start.
func removeUnder(ctx context.Context, dst Sink, start string) error {
	prefix := objectKey(dst, start)
	it := dst.Bucket.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := dst.Bucket.Delete(ctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return fmt.Errorf("remove %s: %w", obj.Key, err)
		}
	}
}
