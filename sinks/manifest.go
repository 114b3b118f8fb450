package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/fhirlake/fhirlake/schema"
)

// Manifest describes one published run: out/_manifest.json. It is written last; while it is absent the
// output under out is not published. Keys in it are relative to out.
//
// Fields marshal in declaration order and Resources sorted by type, so equal manifests are equal bytes.
type Manifest struct {
	FHIRVersion   string `json:"fhir_version"`
	SchemaVersion string `json:"schema_version"`
	// Validator is the validation path the run took: "fast" or "reference" (Totals.ValidByReference says how
	// many valid lines the reference validated on the fast path).
	Validator string    `json:"validator,omitempty"`
	RunID     string    `json:"run_id,omitempty"`
	Source    string    `json:"source"`
	Started   time.Time `json:"started"`  // RFC 3339
	Finished  time.Time `json:"finished"` // RFC 3339
	Totals    Totals    `json:"totals"`
	// Resources has an entry for every type with a valid or a rejected line.
	Resources map[string]ResourceStats `json:"resources"`
	Inputs    []Input                  `json:"inputs"`
	// Rejects lists the quarantine files (Rejects.Close), errors.ndjson among them.
	Rejects []File `json:"rejects"`
	// PatientLinks lists the files of the patient-link table (_patient_links/part-NNNNN.parquet) of a run that
	// read per-Patient objects.
	PatientLinks []File `json:"patient_links,omitempty"`
	// BlockIssues are the structural problems of per-Patient objects (at most a bounded number per object;
	// Totals.BlockIssues counts all). The lines concerned were still converted.
	BlockIssues []BlockIssue `json:"block_issues,omitempty"`

	// Optional, for runs started from an export or a message.

	// Export is the persisted export handle, as its owner encodes it.
	Export json.RawMessage `json:"export,omitempty"`
	// TransactionTime is the export's transactionTime, verbatim.
	TransactionTime string `json:"transaction_time,omitempty"`
	// Message is the triggering message, as its owner encodes it (never resource content).
	Message json.RawMessage `json:"message,omitempty"`
	// PhaseSeconds is the wall time of each phase of the run ("export", "convert", "publish" ...).
	PhaseSeconds map[string]float64 `json:"phase_seconds,omitempty"`
	// Extra holds anything else a later stage records, by name.
	Extra map[string]json.RawMessage `json:"extra,omitempty"`
}

// Totals are the counts of a whole run. Lines = Valid + Rejected; Rows = Valid - Duplicates once every valid line
// is written.
type Totals struct {
	Lines    int64 `json:"lines"` // non-blank data lines read (per-Patient headers are not data)
	Valid    int64 `json:"valid"`
	Rejected int64 `json:"rejected"`
	// Duplicates counts the valid lines of per-Patient objects not written because a resource with the same
	// (type, id, meta.versionId or else meta.lastUpdated) was written already.
	Duplicates int64 `json:"duplicates"`
	Rows       int64 `json:"rows"`  // Parquet rows written
	Links      int64 `json:"links"` // patient-link rows written
	// ValidByReference counts the valid lines whose verdict came from google/fhir/go's jsonformat (the reference
	// path): all of them with the reference validator; with the fast one, those in a shape it does not model
	// (null values, escaped keys ...), which convert at the reference's speed, about a twentieth of the fast
	// path's.
	ValidByReference int64 `json:"valid_by_reference"`
	// BlockIssues counts the structural problems of per-Patient objects.
	BlockIssues int64 `json:"block_issues"`
	// Unparsed counts the rejected lines whose resourceType is missing, unknown to R4 or unreadable
	// (_rejects/_unparsed.ndjson); they are part of Rejected and of no resource type's counts.
	Unparsed int64 `json:"unparsed"`
	// RejectedInputs counts the objects that could not be read to their end because their content is damaged
	// (a corrupt or truncated gzip stream). Their lines before the damage are counted above; whatever followed it
	// is lost. Inputs says which objects and why. A run with RejectedInputs > 0 is published but incomplete.
	RejectedInputs int64 `json:"rejected_inputs"`
}

// ResourceStats are the counts and files of one resource type. Lines = Valid + Rejected; Rows = Valid -
// Duplicates (the distinct rows written).
type ResourceStats struct {
	Lines      int64 `json:"lines"`
	Valid      int64 `json:"valid"`
	Rejected   int64 `json:"rejected"`
	Duplicates int64 `json:"duplicates"` // valid lines skipped as already written (per-Patient objects)
	Rows       int64 `json:"rows"`
	Links      int64 `json:"links"` // patient-link rows pointing at this type's rows
	// ValidByReference counts the valid lines whose verdict came from the reference path (Totals.ValidByReference).
	ValidByReference int64  `json:"valid_by_reference"`
	Files            []File `json:"files"` // Table.Close
}

// Input is one object read.
type Input struct {
	Object string `json:"object"`
	Lines  int64  `json:"lines"` // non-blank data lines
	Bytes  int64  `json:"bytes"` // object size
	// Layout is how the object was read: "per-type" or "per-patient" (empty in manifests of older runs).
	Layout string `json:"layout,omitempty"`
	// Blocks and Headers count the Patient blocks and the Parameters header lines of a per-Patient object.
	Blocks  int64 `json:"blocks,omitempty"`
	Headers int64 `json:"headers,omitempty"`
	// Error says why the object could not be read to its end (its content is damaged); Lines counts the lines
	// read before. It never holds content. Empty when the object was read whole.
	Error string `json:"error,omitempty"`
}

// BlockIssue is one structural problem of a per-Patient object: where, and why. Reason holds no content.
type BlockIssue struct {
	Object string `json:"object"`
	Line   int64  `json:"line"` // 0 when unknown: in a split of the object past its first byte (Offset)
	// Offset is the byte offset of the line in the object, given when Line is unknown.
	Offset int64  `json:"offset,omitempty"`
	Reason string `json:"reason"`
}

// marshal is m as indented JSON with a final newline; nil lists and maps are written as empty ones.
func (m *Manifest) marshal() ([]byte, error) {
	c := *m
	if c.Resources == nil {
		c.Resources = map[string]ResourceStats{}
	}
	res := make(map[string]ResourceStats, len(c.Resources))
	for k, v := range c.Resources {
		if v.Files == nil {
			v.Files = []File{}
		}
		res[k] = v
	}
	c.Resources = res
	if c.Inputs == nil {
		c.Inputs = []Input{}
	}
	if c.Rejects == nil {
		c.Rejects = []File{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteManifest writes out/_manifest.json, which publishes the run. Call it last, after every Table and the
// Rejects are closed and RemoveStale has run.
func WriteManifest(ctx context.Context, b *blob.Bucket, out string, m *Manifest) error {
	key := ObjectKey(out, manifestKey)
	data, err := m.marshal()
	if err != nil {
		return fmt.Errorf("encode manifest %s: %w", key, err)
	}
	if err := writeObject(ctx, b, key, jsonType, data); err != nil {
		return fmt.Errorf("publish manifest: %w", err)
	}
	return nil
}

// ReadManifest reads out/_manifest.json. When there is none, the error wraps os.ErrNotExist.
func ReadManifest(ctx context.Context, b *blob.Bucket, out string) (*Manifest, error) {
	key := ObjectKey(out, manifestKey)
	data, err := b.ReadAll(ctx, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, fmt.Errorf("read manifest %s: %w", key, errors.Join(os.ErrNotExist, err))
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode manifest %s: %w", key, err)
	}
	return &m, nil
}

// Unpublish deletes out/_manifest.json, if any: a replacing run calls it before writing anything, so that a
// half-replaced output is never published.
func Unpublish(ctx context.Context, b *blob.Bucket, out string) error {
	key := ObjectKey(out, manifestKey)
	if err := b.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("unpublish %s: %w", key, err)
	}
	return nil
}

// ours matches, relative to out, the objects a run writes besides the manifest: part files (of resource types and
// of the patient-link table) and quarantine. Other "_" directories are not ours.
var ours = regexp.MustCompile(`^(?:(?:[A-Za-z][A-Za-z0-9]*|` + regexp.QuoteMeta(schema.LinksTable) +
	`)/part-(?:t[0-9]{4,}-)?(?:[du]-)?[0-9]{5,}\.parquet|_rejects/[^/]+\.ndjson)$`)

// RemoveStale deletes the objects of ours under out (<Type>/part-NNNNN.parquet, _patient_links/part-NNNNN.parquet
// and _rejects/*.ndjson) whose key,
// relative to out, is not in keep, and returns their relative keys in order. Other objects, the manifest among
// them, are never touched.
func RemoveStale(ctx context.Context, b *blob.Bucket, out string, keep map[string]bool) (removed []string, err error) {
	prefix := ObjectKey(out, "")
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return removed, nil
		}
		if err != nil {
			return removed, fmt.Errorf("list %q for stale files: %w", prefix, err)
		}
		if obj.IsDir {
			continue
		}
		rel := obj.Key[len(prefix):]
		if !ours.MatchString(rel) || keep[rel] {
			continue
		}
		if err := b.Delete(ctx, obj.Key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return removed, fmt.Errorf("remove stale %s: %w", obj.Key, err)
		}
		removed = append(removed, rel)
	}
}
