package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"gocloud.dev/blob"
)

// Issue is one reason a line was rejected (the same JSON shape as transform.Issue). Detail never holds a value
// from the resource.
type Issue struct {
	Path   string `json:"path"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

// Reject is one rejected input line.
type Reject struct {
	Source       string // input object key
	Line         int64  // 1-based line number in Source; 0 when unknown (a split past byte 0): Offset locates it
	Offset       int64  // byte offset of the line in Source, recorded when Line is 0
	ResourceType string // the line's resourceType if it is a string, else ""
	Known        bool   // ResourceType is an R4 resource type
	ID           string // the resource id if known
	Issues       []Issue
	Raw          []byte // the line as read, without its line terminator
}

// errorLine is one line of _rejects/errors.ndjson.
type errorLine struct {
	Source string `json:"source"`
	Line   int64  `json:"line"`
	Offset int64  `json:"offset,omitempty"` // when line is 0 (unknown)
	// Object marks the entry of an object that could not be read to its end (WriteInput): Line is where reading
	// stopped, and nothing of it is quarantined.
	Object       bool    `json:"object,omitempty"`
	ResourceType string  `json:"resourceType"`
	ID           string  `json:"id,omitempty"`
	Issues       []Issue `json:"issues"`
}

// Rejects quarantines invalid lines: each goes, exactly as it was read and followed by "\n", to
// out/_rejects/<Type>.ndjson, or to out/_rejects/_unparsed.ndjson when its type is unknown or unreadable; and one
// JSON line per reject goes to out/_rejects/errors.ndjson. Files are opened on first use and committed by Close.
// After any failure, and after Abort, no file is committed and every call returns an error.
//
// Rejects is safe for concurrent use: Write calls are serialised.
type Rejects struct {
	b   *blob.Bucket
	out string
	tag string // "" or "-t0003": the file names of one task of a spread run

	mu    sync.Mutex
	open  map[string]*ndjsonFile // by key relative to out
	files []File                 // after Close
	err   error                  // first failure, or errAborted; sticky
	done  bool
}

type ndjsonFile struct {
	obj   *object
	rows  int64
	bytes int64
}

// NewRejects prepares the quarantine under out. Nothing is written until Write.
func NewRejects(b *blob.Bucket, out string) *Rejects {
	return &Rejects{b: b, out: out, open: map[string]*ndjsonFile{}}
}

// NewTaskRejects is the quarantine of one task of a run spread over several processes: its files are
// out/_rejects/<Type>-t0003.ndjson, _unparsed-t0003.ndjson and errors-t0003.ndjson, so that tasks never write the
// same object.
func NewTaskRejects(b *blob.Bucket, out string, task int) *Rejects {
	r := NewRejects(b, out)
	r.tag = fmt.Sprintf("-t%04d", task)
	return r
}

// name is the key, relative to out, of the quarantine file rel (errorsKey, unparsedKey or a type's) of r.
func (r *Rejects) name(rel string) string {
	if r.tag == "" {
		return rel
	}
	return strings.TrimSuffix(rel, ".ndjson") + r.tag + ".ndjson"
}

// Write quarantines one line. The line's bytes come from raw when it is not nil (an oversize line, streamed
// without holding it whole), else from rej.Raw.
func (r *Rejects) Write(ctx context.Context, rej Reject, raw io.Reader) error {
	return r.do(ctx, func() error { return r.write(ctx, rej, raw) },
		func(err error) error { return fmt.Errorf("write reject of %s line %d: %w", rej.Source, rej.Line, err) })
}

// WriteInput records that the object source could not be read to its end, reading having stopped at line (a
// corrupt or truncated gzip stream): one entry {source, line, object: true, issues} in errors.ndjson. Nothing is
// quarantined, since no line of the damaged part can be told apart.
func (r *Rejects) WriteInput(ctx context.Context, source string, line int64, issues []Issue) error {
	write := func() error {
		reason, err := encodeErrorLine(errorLine{Source: source, Line: line, Object: true, Issues: issues})
		if err != nil {
			return err
		}
		return r.append(ctx, errorsKey, bytes.NewReader(reason))
	}
	return r.do(ctx, write, func(err error) error { return fmt.Errorf("record rejected object %s: %w", source, err) })
}

// do runs write under the lock unless the quarantine has failed or is closed. A failure, wrapped by wrap, is
// sticky.
func (r *Rejects) do(ctx context.Context, write func() error, wrap func(error) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	if r.done {
		return fmt.Errorf("write reject: %w", ErrClosed)
	}
	err := ctx.Err()
	if err == nil {
		err = write()
	}
	if err != nil {
		err = wrap(err)
		r.fail(err)
		return err
	}
	return nil
}

func (r *Rejects) write(ctx context.Context, rej Reject, raw io.Reader) error {
	off := rej.Offset
	if rej.Line > 0 {
		off = 0
	}
	reason, err := encodeErrorLine(errorLine{Source: rej.Source, Line: rej.Line, Offset: off, ResourceType: rej.ResourceType,
		ID: rej.ID, Issues: rej.Issues})
	if err != nil {
		return err
	}
	rel := unparsedKey
	if rej.Known && isTypeName(rej.ResourceType) {
		rel = rejectsDir + rej.ResourceType + ".ndjson"
	}
	if raw == nil {
		raw = bytes.NewReader(rej.Raw)
	}
	if err := r.append(ctx, rel, raw); err != nil {
		return err
	}
	return r.append(ctx, errorsKey, bytes.NewReader(reason))
}

// encodeErrorLine is e as a line of errors.ndjson, newline included. HTML characters are not escaped.
func encodeErrorLine(e errorLine) ([]byte, error) {
	if e.Issues == nil {
		e.Issues = []Issue{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, fmt.Errorf("encode reasons: %w", err)
	}
	return buf.Bytes(), nil
}

// append copies line to the file rel and ends it with "\n" unless line already does (errors.ndjson lines).
func (r *Rejects) append(ctx context.Context, rel string, line io.Reader) error {
	rel = r.name(rel)
	f := r.open[rel]
	if f == nil {
		obj, err := openObject(ctx, r.b, ObjectKey(r.out, rel), ndjsonType, rejectsUploadBuffer)
		if err != nil {
			return err
		}
		f = &ndjsonFile{obj: obj}
		r.open[rel] = f
	}
	stop := f.obj.watch(ctx)
	n, err := io.Copy(f.obj.w, line)
	if err == nil && rel != r.name(errorsKey) {
		var m int
		m, err = f.obj.w.Write([]byte{'\n'})
		n += int64(m)
	}
	f.bytes += n
	f.rows++
	if serr := stop(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("copy line to %s: %w", f.obj.key, err)
	}
	return nil
}

// fail discards every open file and makes err sticky.
func (r *Rejects) fail(err error) {
	for _, f := range r.open {
		f.obj.abort()
	}
	clear(r.open)
	if r.err == nil {
		r.err = err
	}
}

// Close commits the files written and returns them sorted by key (errors.ndjson among them); none when nothing
// was rejected. Close after Close returns the same files.
func (r *Rejects) Close(ctx context.Context) ([]File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	if !r.done {
		r.done = true
		keys := make([]string, 0, len(r.open))
		for k := range r.open {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			f := r.open[k]
			delete(r.open, k)
			if err := f.obj.commit(ctx); err != nil {
				r.fail(err)
				return nil, err
			}
			r.files = append(r.files, File{Key: k, Rows: f.rows, Bytes: f.bytes})
		}
	}
	return append([]File(nil), r.files...), nil
}

// Abort discards every file not yet committed; later calls return an error.
func (r *Rejects) Abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = true
	r.fail(fmt.Errorf("rejects: %w", errAborted))
}
