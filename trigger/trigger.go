// Package trigger starts Cloud Healthcare API FHIR exports and waits for them: it is the first stage of a run, turning
// a request (or a persisted Handle, after a restart) into the list of NDJSON objects that pipeline/ then reads.
//
// Three kinds of export are supported, all through google.golang.org/api/healthcare/v1:
//
//   - KindStore: fhirStores.export to a gcsDestination (one object per resource type), a long-running operation
//     polled with datasets.operations.get;
//   - KindBulk: the system-level $export, written to the store's bulkExportGcsDestination;
//   - KindGroup: Group/{id}/$export, optionally organised by Patient.
//
// The bulk kinds follow the FHIR Bulk Data status protocol through fhirStores.operations.getFhirOperationStatus.
// Start returns a Handle that is plain JSON: persist it, and a later Wait (in another process) resumes waiting on the
// same export without starting a second one. Wait polls with exponential backoff and jitter, honours Retry-After,
// retries transient failures a bounded number of times and cancels the export when the overall deadline passes.
// Callers see only Handle, Progress and Output: no Healthcare API type leaves this package.
//
// Objects are listed and checked through *blob.Bucket (gcsblob in production), opened by Options.OpenBucket.
// The package does not log; errors never carry resource content.
package trigger

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/fhirlake/fhirlake/trigger/internal/fhirtypes"
)

// Kind is the kind of export.
type Kind string

// The export kinds.
const (
	KindStore Kind = "store" // fhirStores.export to Cloud Storage (a long-running operation)
	KindBulk  Kind = "bulk"  // system-level $export to the store's bulkExportGcsDestination
	KindGroup Kind = "group" // Group/{id}/$export to the store's bulkExportGcsDestination
)

// Layout says how the lines of an object are arranged.
type Layout string

// The layouts.
const (
	// LayoutType: every line of the object is a resource of Object.ResourceType.
	LayoutType Layout = "type"
	// LayoutPatient: the object holds Patient blocks (a Patient, then the resources that reference it and the resources
	// those reference; resources may repeat across blocks), so its lines are of mixed types.
	LayoutPatient Layout = "patient"
)

// Sentinel errors that callers branch on.
var (
	// ErrFailed: the export itself failed; the error text carries the operation's message.
	ErrFailed = errors.New("export failed")
	// ErrDeadline: the export was still running when Options.Deadline passed; it has been cancelled.
	ErrDeadline = errors.New("export deadline exceeded")
)

// Request says which export to start.
type Request struct {
	Kind Kind
	// Store is the FHIR store: projects/{p}/locations/{l}/datasets/{d}/fhirStores/{s}.
	Store string
	// Group is the id of the Group to export (KindGroup only).
	Group string
	// Types restricts the export to these resource types (_type); empty exports every type.
	Types []string
	// Since exports only resources updated after this instant (_since); zero exports everything.
	Since time.Time
	// ByPatient asks for organizeOutputBy=Patient (KindGroup only).
	ByPatient bool
	// Destination is gs://bucket/prefix for KindStore; it must hold no object yet. The bulk kinds write where the
	// store's bulkExportGcsDestination says and leave it empty.
	Destination string
}

// Handle identifies a started export. It is plain JSON: persist it and give it back to Wait to resume.
type Handle struct {
	Kind Kind `json:"kind"`
	// Operation is the long-running operation name (KindStore: projects/.../datasets/{d}/operations/{id}) or the
	// FHIR operation status name (bulk kinds: projects/.../fhirStores/{s}/operations/{id}).
	Operation string `json:"operation"`
	// Destination is the normalised gs://bucket/prefix/ of a KindStore export.
	Destination string `json:"destination,omitempty"`
	// ByPatient records organizeOutputBy=Patient, which decides the layout of the Patient object.
	ByPatient bool `json:"byPatient,omitempty"`
	// Started is when the export was started; Options.Deadline counts from it, across restarts.
	Started time.Time `json:"started"`
}

// Progress is what a poll of a running export tells.
type Progress struct {
	Polls int  // status answers received so far in this Wait
	Done  bool // the export has finished (successfully or not)
	// Message is the service's progress text (X-Progress of the bulk kinds).
	Message string
	// Success, Failure and Pending are the operation counters of KindStore (resources exported, failed, pending).
	Success, Failure, Pending int64
}

// Object is one object the export produced.
type Object struct {
	Key  string // key in the bucket Output.Bucket
	Size int64
	// ResourceType is the type of every line of a LayoutType object when known ("" when not, and for LayoutPatient).
	ResourceType string
	Layout       Layout
}

// Output is a finished export: where its objects are and what they hold.
type Output struct {
	// Bucket is the Cloud Storage bucket name (gs://Bucket) holding every object below.
	Bucket string
	// Objects to read, sorted by key.
	Objects []Object
	// Errors are the manifest's error[] entries (files of OperationOutcome), every one, sorted by key. An export can
	// succeed with errors: the caller records them.
	Errors []Object
	// TransactionTime is the instant the export reflects: the manifest's transactionTime, or for KindStore the
	// operation's createTime. Use it as the next incremental export's Since.
	TransactionTime time.Time
	// Progress is the last progress seen.
	Progress Progress
}

var (
	storeName = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/datasets/[^/]+/fhirStores/[^/]+$`)
	// fhirID is the FHIR id datatype.
	fhirID = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	// lroName and fhirOpName are the operation names of KindStore and of the bulk kinds.
	lroName    = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/datasets/[^/]+/operations/[^/]+$`)
	fhirOpName = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/datasets/[^/]+/fhirStores/[^/]+/operations/[^/]+$`)
)

// Validate reports what is wrong with r, if anything.
func (r Request) Validate() error {
	var errs []error
	switch r.Kind {
	case KindStore, KindBulk, KindGroup:
	default:
		errs = append(errs, fmt.Errorf("unknown export kind %q", r.Kind))
	}
	if !storeName.MatchString(r.Store) {
		errs = append(errs, fmt.Errorf("store %q is not projects/{p}/locations/{l}/datasets/{d}/fhirStores/{s}", r.Store))
	}
	if r.Kind == KindGroup && !isGroupID(r.Group) {
		errs = append(errs, fmt.Errorf("group id %q is not a FHIR id", r.Group))
	}
	if r.Kind != KindGroup && (r.Group != "" || r.ByPatient) {
		errs = append(errs, fmt.Errorf("group and organize-by-patient apply to %s exports only", KindGroup))
	}
	for _, t := range r.Types {
		if !fhirtypes.Known(t) {
			errs = append(errs, fmt.Errorf("%q is not an R4 resource type", t))
		}
	}
	if r.Kind == KindStore {
		if _, _, err := parseGS(r.Destination); err != nil {
			errs = append(errs, err)
		}
	} else if r.Destination != "" {
		errs = append(errs, fmt.Errorf("destination applies to %s exports only (bulk kinds use the store's bulkExportGcsDestination)", KindStore))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid export request: %w", err)
	}
	return nil
}

// Validate reports what is wrong with h, if anything.
func (h Handle) Validate() error {
	switch h.Kind {
	case KindStore:
		if !lroName.MatchString(h.Operation) {
			return fmt.Errorf("invalid handle: %q is not a dataset operation name", h.Operation)
		}
		if _, _, err := parseGS(h.Destination); err != nil {
			return fmt.Errorf("invalid handle: %w", err)
		}
	case KindBulk, KindGroup:
		if !fhirOpName.MatchString(h.Operation) {
			return fmt.Errorf("invalid handle: %q is not a FHIR store operation name", h.Operation)
		}
	default:
		return fmt.Errorf("invalid handle: unknown export kind %q", h.Kind)
	}
	return nil
}

// ParseHandle decodes a Handle persisted as JSON and validates it.
func ParseHandle(data []byte) (Handle, error) {
	var h Handle
	if err := json.Unmarshal(data, &h); err != nil {
		return Handle{}, fmt.Errorf("decode export handle: %w", err)
	}
	if err := h.Validate(); err != nil {
		return Handle{}, err
	}
	return h, nil
}

// sinceParam formats t as the API wants _since: to the millisecond, with a zone.
func sinceParam(t time.Time) string {
	return t.Format("2006-01-02T15:04:05.000Z07:00")
}

// parseGS splits gs://bucket/prefix into the bucket name and the object prefix, which is "" or ends with "/"
// (the service appends the slash when composing object names).
func parseGS(uri string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(uri, "gs://")
	if !ok {
		return "", "", fmt.Errorf("destination %q is not gs://bucket/prefix", uri)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", fmt.Errorf("destination %q has no bucket", uri)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return bucket, prefix, nil
}

// parseGSObject splits gs://bucket/key into bucket and key.
func parseGSObject(uri string) (bucket, key string, err error) {
	rest, ok := strings.CutPrefix(uri, "gs://")
	if !ok {
		return "", "", fmt.Errorf("object url %q is not gs://bucket/key", uri)
	}
	bucket, key, _ = strings.Cut(rest, "/")
	if bucket == "" || key == "" || strings.HasSuffix(key, "/") {
		return "", "", fmt.Errorf("object url %q is not gs://bucket/key", uri)
	}
	return bucket, key, nil
}
