// Package sinks is the last stage of a run: it puts what transform produced onto a bucket.
//
// pipeline feeds it; it imports nothing of ours beyond what the contract allows. Valid resources arrive as Arrow
// records and go to one Parquet Table per resource type (OUT/<Type>/part-NNNNN.parquet), whose column chunks it
// encodes itself (columns.go and chunk.go say why), with the Parquet library's schema, statistics and footer;
// invalid lines go, exactly as they were read, to quarantine NDJSON under OUT/_rejects with one reason line each in
// OUT/_rejects/errors.ndjson.
// The patient-link table of per-Patient exports (schema.Links) is a Table too: OUT/_patient_links/part-NNNNN.parquet.
// A run ends with RemoveStale (objects of an earlier run that this run did not write) and then WriteManifest:
// OUT/_manifest.json is written last and is the publish point. A replacing run starts with Unpublish.
//
// Every object is written through a *blob.Writer whose context the package owns; on failure that context is
// cancelled before the writer is closed, so nothing half-written is ever committed.
//
// Object keys: out is a key prefix inside the bucket without a trailing slash, "" meaning the bucket root. Keys in
// File, in the manifest and in RemoveStale's keep set are relative to out ("Patient/part-00000.parquet",
// "_rejects/errors.ndjson"), so a published output can be moved as a whole.
package sinks

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/schema"
)

// File is one object a sink committed.
type File struct {
	Key   string `json:"key"`   // relative to out, slash-separated
	Rows  int64  `json:"rows"`  // Parquet rows, or NDJSON lines
	Bytes int64  `json:"bytes"` // size of the committed object
}

// ErrClosed is returned by Write after Close or Abort.
var ErrClosed = errors.New("sink is closed")

// errAborted is what a Table or Rejects reports after Abort.
var errAborted = errors.New("sink was aborted")

// Layout of the output, relative to out.
const (
	manifestKey    = "_manifest.json"
	rejectsDir     = "_rejects/"
	errorsKey      = rejectsDir + "errors.ndjson"
	unparsedKey    = rejectsDir + "_unparsed.ndjson"
	parquetType    = "application/vnd.apache.parquet"
	ndjsonType     = "application/x-ndjson"
	jsonType       = "application/json"
	partNameFormat = "%s/%s%05d.parquet"
)

// ObjectKey is the bucket key of rel under out, a prefix given with or without its trailing slash.
func ObjectKey(out, rel string) string {
	out = strings.TrimSuffix(out, "/")
	if out == "" {
		return rel
	}
	return out + "/" + rel
}

// isTypeName reports whether s can be a FHIR resource type and so a path segment of ours: an ASCII letter
// followed by ASCII letters and digits.
func isTypeName(s string) bool {
	if s == "" || !(s[0] >= 'A' && s[0] <= 'Z' || s[0] >= 'a' && s[0] <= 'z') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// isTableName reports whether s names a Table: a resource type, or the patient-link table.
func isTableName(s string) bool { return isTypeName(s) || s == schema.LinksTable }

// Upload buffers. gcsblob gives every object being written an upload buffer of WriterOptions.BufferSize (GCS's
// chunk size; 16 MiB unless set), allocated when the object is opened and kept until it is committed: each chunk is
// one request, retried from the buffer. A run over every R4 type has about 150 parts open at once, so a fixed 4 MiB
// buffer each came to 600 MB of heap on Cloud Storage, which no benchmark on local files showed (r4-examples peaked
// at about 700 MB RSS, against 380 MB on local files). A part therefore opens its object only when its first row
// group is written out, with a buffer fitted to that row group (or to the whole file, when that row group is its
// last): small tables upload in one request from a buffer of their own size. The parts of one table share 4 MiB
// (partUploadCap): a large table holds 4 MiB of upload buffers whether it writes one part or several at once, each
// part uploading in chunks of its share. The local and memory buckets ignore the buffer size.
const (
	minUploadBuffer = 256 << 10 // GCS's granularity for the chunks of a resumable upload
	maxUploadBuffer = 4 << 20
	// rejectsUploadBuffer is a quarantine file's: one per type with rejects (up to about 150), most holding a
	// few lines of a few KB, so a long one costs requests rather than every one a large buffer.
	rejectsUploadBuffer = minUploadBuffer
)

// partUploadCap is the largest upload buffer of a part of a table that keeps up to openParts parts open at once:
// they share maxUploadBuffer, with at least 1 MiB each.
func partUploadCap(openParts int) int {
	c := maxUploadBuffer / max(openParts, 1) / minUploadBuffer * minUploadBuffer
	return max(c, 1<<20)
}

// uploadBufferFor returns the upload buffer of an object whose first write is about n bytes: n rounded up to a
// multiple of 256 KiB, at least 256 KiB and at most 4 MiB.
func uploadBufferFor(n int64) int {
	if n >= maxUploadBuffer {
		return maxUploadBuffer
	}
	return int(max(minUploadBuffer, (n+minUploadBuffer-1)/minUploadBuffer*minUploadBuffer))
}

// object is one blob being written under a context the package owns. Nothing reaches the bucket until commit;
// abort cancels the context first, so the close that follows cannot commit.
type object struct {
	key    string // bucket key
	cancel context.CancelFunc
	w      *blob.Writer
}

// openObject starts writing key with an upload buffer of bufferSize bytes (see uploadBufferFor). The writer's
// context keeps ctx's values but not its cancellation: an object outlives the call that opened it. Callers tie each
// later call to its ctx with watch.
func openObject(ctx context.Context, b *blob.Bucket, key, contentType string, bufferSize int) (*object, error) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w, err := b.NewWriter(wctx, key, &blob.WriterOptions{ContentType: contentType, BufferSize: bufferSize})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open %s for writing: %w", key, err)
	}
	return &object{key: key, cancel: cancel, w: w}, nil
}

// watch cancels o's writer if ctx ends before the returned stop is called. stop reports ctx's error if it did.
func (o *object) watch(ctx context.Context) (stop func() error) {
	after := context.AfterFunc(ctx, o.cancel)
	return func() error {
		if !after() || ctx.Err() != nil {
			return fmt.Errorf("write %s: %w", o.key, context.Cause(ctx))
		}
		return nil
	}
}

// commit closes the writer, which makes the object visible. If ctx ends first, the writer is cancelled and the
// object is not committed.
func (o *object) commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		o.abort()
		return fmt.Errorf("commit %s: %w", o.key, err)
	}
	after := context.AfterFunc(ctx, o.cancel)
	err := o.w.Close()
	after()
	o.cancel()
	if err != nil {
		return fmt.Errorf("commit %s: %w", o.key, err)
	}
	return nil
}

// abort discards the object: cancel first, then close, so the close cannot commit.
func (o *object) abort() {
	o.cancel()
	_ = o.w.Close() // reports the cancellation; nothing was committed
}

// writeObject writes data to key as one object, committed only if every byte was written.
func writeObject(ctx context.Context, b *blob.Bucket, key, contentType string, data []byte) error {
	o, err := openObject(ctx, b, key, contentType, uploadBufferFor(int64(len(data))))
	if err != nil {
		return err
	}
	stop := o.watch(ctx)
	if _, err := o.w.Write(data); err != nil {
		stop()
		o.abort()
		return fmt.Errorf("write %s: %w", key, err)
	}
	if err := stop(); err != nil {
		o.abort()
		return err
	}
	return o.commit(ctx)
}
