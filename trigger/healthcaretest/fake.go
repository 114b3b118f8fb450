// Package healthcaretest is an in-process fake of the Cloud Healthcare API FHIR export endpoints, for testing trigger
// (and anything that drives google.golang.org/api/healthcare/v1 exports) without a cloud project: no emulator exists.
//
// It is an httptest server with the REST paths and JSON shapes of the real service, so the real client is pointed at
// it with option.WithEndpoint(s.URL()+"/") and option.WithoutAuthentication(). It serves one FHIR store loaded from a
// directory of NDJSON files and, when an export completes, writes the real object layout into a *blob.Bucket:
//
//   - fhirStores.export: {uriPrefix}/{Type}, one object per resource type, polled with datasets.operations.get;
//   - fhir/$export and fhir/Group/{id}/$export: {export_id}_{Type}.ndjson under the store's bulkExportGcsDestination,
//     polled with fhirStores.operations (getFhirOperationStatus, deleteFhirOperation);
//   - organizeOutputBy=Patient: {export_id}_Patient.ndjson holds one block per Patient member, in member order: the
//     Patient, then every resource referencing it, then every resource that the Patient or those reference (one hop,
//     not transitive); each part grouped by type name, store order within a type; resources repeat across blocks and
//     the exported Group is in none. References count wherever they appear, as "Type/id" (relative, absolute or
//     versioned) or as Synthea's "urn:uuid:{id}" (resolved by id). _type and _since filter a block but never drop its
//     Patient. {export_id}_Group.ndjson holds the Group; other members go to per-type files. Over
//     ../shared/data/synthea-100 this gives exactly the resources, per block, of synthea-group-by-patient (only the
//     order of referenced resources within a type is the service's own). Resources are written verbatim.
//
// It honours _type and _since (against meta.lastUpdated), checks what the service checks (Prefer: respond-async, a
// _since to the second with a zone, known types, an existing Group), completes after a number of polls and a delay,
// counts export starts, polls and cancels, and injects faults (a failing export, 429/503 or dropped connections on a
// seeded share of requests, an error entry in the manifest, an export that never completes).
package healthcaretest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob"
	healthcare "google.golang.org/api/healthcare/v1"
	"google.golang.org/api/option"

	"github.com/fhirlake/fhirlake/trigger/internal/fhirtypes"
)

// Options configure a Server. Only Bucket is required.
type Options struct {
	// Project, Location, Dataset and Store name the FHIR store (zero: "fake-project", "us-central1", "fake-dataset",
	// "fake-store").
	Project, Location, Dataset, Store string
	// Bucket receives exported objects; BucketName is its name in gs:// URLs (zero: "fake-bucket").
	Bucket     *blob.Bucket
	BucketName string
	// BulkPrefix is the object prefix of the store's bulkExportGcsDestination (zero: "bulk/").
	BulkPrefix string
	// Polls is how many status polls an export answers "in progress" before it completes; Delay is how long it runs
	// at least, by Now. An export completes at the first poll past both.
	Polls int
	Delay time.Duration
	// Now is the fake's clock (zero: time.Now).
	Now func() time.Time
	// RetryAfter, when positive, is sent as Retry-After on in-progress answers and injected 429/503s.
	RetryAfter time.Duration
	// LastUpdated is the meta.lastUpdated of stored resources that carry none (zero: 2020-01-01T00:00:00Z).
	LastUpdated time.Time
	// Faults to inject from the start; SetFaults changes them later.
	Faults Faults
}

// Faults are the failures a Server injects.
type Faults struct {
	// Seed seeds the choice of requests that fail.
	Seed uint64
	// Transient is the share of requests answered 429 or 503 (as the Google front end does); Reset the share whose
	// connection is dropped without an answer.
	Transient, Reset float64
	// PollsOnly limits Transient and Reset to status polls (operations.get, getFhirOperationStatus): the export
	// starts, then its status is unavailable.
	PollsOnly bool
	// Fail, when set, makes every export that completes from now on fail with this message.
	Fail string
	// ManifestError adds an error[] entry (an NDJSON file of OperationOutcome) to bulk manifests.
	ManifestError bool
	// NeverComplete keeps every export in progress.
	NeverComplete bool
}

// Server is a running fake. Close it when done.
type Server struct {
	ts    *httptest.Server
	opts  Options
	store *store

	storeName, datasetName string

	mu       sync.Mutex
	faults   Faults
	rng      *rand.Rand
	ops      map[string]*operation
	nextID   int
	starts   int
	polls    int
	cancels  int
	requests int
	injected int
	waiters  []pollWaiter // PollsReached channels not yet closed
}

// pollWaiter is a channel PollsReached closes once polls reach n.
type pollWaiter struct {
	n  int
	ch chan struct{}
}

type opState int

const (
	running opState = iota
	succeeded
	failed
	cancelled
)

// operation is one export.
type operation struct {
	id      string
	kind    string // "store", "bulk" or "group"
	started time.Time
	ended   time.Time
	polls   int
	state   opState
	message string // failure message

	f          filter
	keyPrefix  string    // where objects go
	group      *resource // group exports
	byPatient  bool
	requestURL string
	total      int // resources to export, for counters

	output, errors []manifestEntry
}

type manifestEntry struct {
	Type string `json:"type"`
	URL  string `json:"url"`
}

// New loads the FHIR store from dir and starts serving it.
func New(dir string, opts Options) (*Server, error) {
	if opts.Bucket == nil {
		return nil, fmt.Errorf("healthcaretest: Options.Bucket is required")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&opts.Project, "fake-project")
	def(&opts.Location, "us-central1")
	def(&opts.Dataset, "fake-dataset")
	def(&opts.Store, "fake-store")
	def(&opts.BucketName, "fake-bucket")
	def(&opts.BulkPrefix, "bulk/")
	if !strings.HasSuffix(opts.BulkPrefix, "/") {
		opts.BulkPrefix += "/"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LastUpdated.IsZero() {
		opts.LastUpdated = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	st, err := loadStore(dir, opts.LastUpdated)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, store: st, ops: map[string]*operation{}}
	s.datasetName = fmt.Sprintf("projects/%s/locations/%s/datasets/%s", opts.Project, opts.Location, opts.Dataset)
	s.storeName = s.datasetName + "/fhirStores/" + opts.Store
	s.SetFaults(opts.Faults)
	s.ts = httptest.NewServer(http.HandlerFunc(s.serve))
	return s, nil
}

// Close stops the server.
func (s *Server) Close() { s.ts.Close() }

// URL is the endpoint to give option.WithEndpoint (append "/").
func (s *Server) URL() string { return s.ts.URL }

// StoreName is the FHIR store's resource name.
func (s *Server) StoreName() string { return s.storeName }

// BucketName is the bucket's name in gs:// URLs.
func (s *Server) BucketName() string { return s.opts.BucketName }

// Service returns a healthcare/v1 client for this server.
func (s *Server) Service(ctx context.Context) (*healthcare.Service, error) {
	return healthcare.NewService(ctx, option.WithEndpoint(s.ts.URL+"/"), option.WithoutAuthentication())
}

// SetFaults replaces the faults to inject, and reseeds their choice.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	s.rng = rand.New(rand.NewPCG(f.Seed, f.Seed^0x9e3779b97f4a7c15))
}

// Starts is the number of exports started (requests refused or failed do not count).
func (s *Server) Starts() int { s.mu.Lock(); defer s.mu.Unlock(); return s.starts }

// Polls is the number of status polls answered (operations.get and getFhirOperationStatus), injected faults aside.
func (s *Server) Polls() int { s.mu.Lock(); defer s.mu.Unlock(); return s.polls }

// PollsReached returns a channel closed once n status polls have been answered (Polls() >= n): a test waits on it
// for an export to be started and waited on, rather than polling Polls.
func (s *Server) PollsReached(n int) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if s.polls >= n {
		close(ch)
		return ch
	}
	s.waiters = append(s.waiters, pollWaiter{n: n, ch: ch})
	return ch
}

// Cancels is the number of exports cancelled.
func (s *Server) Cancels() int { s.mu.Lock(); defer s.mu.Unlock(); return s.cancels }

// Requests is the number of requests received; Injected how many of them were answered with an injected fault.
func (s *Server) Requests() int { s.mu.Lock(); defer s.mu.Unlock(); return s.requests }

// Injected is the number of requests answered with an injected 429/503 or dropped.
func (s *Server) Injected() int { s.mu.Lock(); defer s.mu.Unlock(); return s.injected }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	poll := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/operations/")
	if (poll || !s.faults.PollsOnly) && s.inject(w) {
		s.injected++
		return
	}
	path, ok := strings.CutPrefix(r.URL.Path, "/v1/")
	if !ok {
		googleError(w, http.StatusNotFound, "NOT_FOUND", "unknown path")
		return
	}
	switch {
	case r.Method == http.MethodPost && path == s.storeName+":export":
		s.startStore(w, r)
	case r.Method == http.MethodGet && path == s.storeName+"/fhir/$export":
		s.startBulk(w, r, nil)
	case r.Method == http.MethodGet && strings.HasPrefix(path, s.storeName+"/fhir/Group/") && strings.HasSuffix(path, "/$export"):
		id := strings.TrimSuffix(strings.TrimPrefix(path, s.storeName+"/fhir/Group/"), "/$export")
		g, ok := s.store.byKey["Group/"+id]
		if !ok || strings.Contains(id, "/") {
			fhirError(w, http.StatusNotFound, "not-found", "Group/"+id+" not found")
			return
		}
		s.startBulk(w, r, g)
	case strings.HasPrefix(path, s.storeName+"/operations/"):
		op := s.ops[strings.TrimPrefix(path, s.storeName+"/operations/")]
		if op == nil || op.kind == "store" || op.state == cancelled {
			fhirError(w, http.StatusNotFound, "not-found", "operation not found")
			return
		}
		switch r.Method {
		case http.MethodGet:
			s.fhirStatus(w, op)
		case http.MethodDelete:
			s.fhirDelete(w, op)
		default:
			fhirError(w, http.StatusMethodNotAllowed, "not-supported", "method not allowed")
		}
	case strings.HasPrefix(path, s.datasetName+"/operations/"):
		id := strings.TrimPrefix(path, s.datasetName+"/operations/")
		cancel := false
		if strings.HasSuffix(id, ":cancel") && r.Method == http.MethodPost {
			id, cancel = strings.TrimSuffix(id, ":cancel"), true
		} else if r.Method != http.MethodGet {
			googleError(w, http.StatusMethodNotAllowed, "INVALID_ARGUMENT", "method not allowed")
			return
		}
		op := s.ops[id]
		if op == nil || op.kind != "store" {
			googleError(w, http.StatusNotFound, "NOT_FOUND", "operation not found")
			return
		}
		if cancel {
			s.lroCancel(w, op)
		} else {
			s.lroGet(w, op)
		}
	case r.Method == http.MethodGet && path == s.storeName:
		writeJSON(w, http.StatusOK, "application/json", map[string]any{
			"name":                     s.storeName,
			"version":                  "R4",
			"bulkExportGcsDestination": map[string]string{"uriPrefix": "gs://" + s.opts.BucketName + "/" + s.opts.BulkPrefix},
		})
	default:
		googleError(w, http.StatusNotFound, "NOT_FOUND", "unknown resource or method")
	}
}

// inject answers the request with a fault, if the dice say so.
func (s *Server) inject(w http.ResponseWriter) bool {
	f := s.faults
	if f.Transient <= 0 && f.Reset <= 0 {
		return false
	}
	x := s.rng.Float64()
	switch {
	case x < f.Reset:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					tc.SetLinger(0) // reset, not an orderly close
				}
				conn.Close()
				return true
			}
		}
		googleError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "connection dropped")
		return true
	case x < f.Reset+f.Transient:
		s.setRetryAfter(w)
		if s.rng.IntN(2) == 0 {
			googleError(w, http.StatusTooManyRequests, "RESOURCE_EXHAUSTED", "quota exceeded (injected)")
		} else {
			googleError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "service unavailable (injected)")
		}
		return true
	}
	return false
}

func (s *Server) setRetryAfter(w http.ResponseWriter) {
	if s.opts.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((s.opts.RetryAfter+time.Second-1)/time.Second)))
	}
}

// sinceRE is what the service accepts as _since: to the second, optional fraction, with a zone.
var sinceRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$`)

// parseFilter checks _type and _since as the service does.
func parseFilter(types, since string) (filter, error) {
	var f filter
	if types != "" {
		f.types = map[string]bool{}
		for _, t := range strings.Split(types, ",") {
			t = strings.TrimSpace(t)
			if !fhirtypes.Known(t) {
				return filter{}, fmt.Errorf("_type: %q is not a supported resource type", t)
			}
			f.types[t] = true
		}
	}
	if since != "" {
		if !sinceRE.MatchString(since) {
			return filter{}, fmt.Errorf("_since: %q is not a time to the second with a time zone", since)
		}
		t, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			return filter{}, fmt.Errorf("_since: %q is not a valid time", since)
		}
		f.since = t
	}
	return f, nil
}

func (s *Server) newOp(kind string, f filter) *operation {
	s.nextID++
	s.starts++
	op := &operation{id: strconv.Itoa(1000000 + s.nextID), kind: kind, started: s.opts.Now(), f: f}
	s.ops[op.id] = op
	return op
}

func (s *Server) startStore(w http.ResponseWriter, r *http.Request) {
	var req struct {
		GcsDestination *struct {
			URIPrefix string `json:"uriPrefix"`
		} `json:"gcsDestination"`
		BigqueryDestination json.RawMessage `json:"bigqueryDestination"`
		Since               string          `json:"_since"`
		Type                string          `json:"_type"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "invalid JSON body")
		return
	}
	if req.GcsDestination == nil || req.BigqueryDestination != nil {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "the fake supports gcsDestination only")
		return
	}
	rest, ok := strings.CutPrefix(req.GcsDestination.URIPrefix, "gs://"+s.opts.BucketName+"/")
	if !ok && req.GcsDestination.URIPrefix != "gs://"+s.opts.BucketName {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "gcsDestination.uriPrefix must be in gs://"+s.opts.BucketName)
		return
	}
	if rest != "" && !strings.HasSuffix(rest, "/") {
		rest += "/"
	}
	f, err := parseFilter(req.Type, req.Since)
	if err != nil {
		googleError(w, http.StatusBadRequest, "INVALID_ARGUMENT", err.Error())
		return
	}
	op := s.newOp("store", f)
	op.keyPrefix = rest
	op.total = len(s.store.selectAll(f))
	writeJSON(w, http.StatusOK, "application/json", s.lroJSON(op))
}

func (s *Server) startBulk(w http.ResponseWriter, r *http.Request, group *resource) {
	if r.Header.Get("Prefer") != "respond-async" {
		fhirError(w, http.StatusBadRequest, "invalid", "the Prefer header must be respond-async")
		return
	}
	if a := r.Header.Get("Accept"); a != "" && !strings.Contains(a, "application/fhir+json") && !strings.Contains(a, "*/*") {
		fhirError(w, http.StatusNotAcceptable, "not-supported", "Accept must allow application/fhir+json")
		return
	}
	q := r.URL.Query()
	f, err := parseFilter(q.Get("_type"), q.Get("_since"))
	if err != nil {
		fhirError(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	for _, p := range []string{"outputFormat", "_outputFormat"} {
		switch q.Get(p) {
		case "", "application/fhir+ndjson", "application/ndjson", "ndjson":
		default:
			fhirError(w, http.StatusBadRequest, "not-supported", p+" must be application/fhir+ndjson")
			return
		}
	}
	org := q.Get("organizeOutputBy")
	if org != "" && (group == nil || org != "Patient") {
		fhirError(w, http.StatusBadRequest, "not-supported", "organizeOutputBy must be Patient, on a Group export")
		return
	}
	kind := "bulk"
	if group != nil {
		kind = "group"
	}
	op := s.newOp(kind, f)
	op.keyPrefix = s.opts.BulkPrefix
	op.group = group
	op.byPatient = org == "Patient"
	op.requestURL = s.ts.URL + r.URL.RequestURI()
	w.Header().Set("Content-Location", s.ts.URL+"/v1/"+s.storeName+"/operations/"+op.id)
	w.WriteHeader(http.StatusAccepted)
}

// advance counts a poll of op and completes it when it is due.
func (s *Server) advance(op *operation) {
	s.polls++
	op.polls++
	s.waiters = slices.DeleteFunc(s.waiters, func(w pollWaiter) bool {
		if s.polls >= w.n {
			close(w.ch)
			return true
		}
		return false
	})
	if op.state != running || s.faults.NeverComplete {
		return
	}
	now := s.opts.Now()
	if op.polls <= s.opts.Polls || now.Sub(op.started) < s.opts.Delay {
		return
	}
	op.ended = now
	if s.faults.Fail != "" {
		op.state, op.message = failed, s.faults.Fail
		return
	}
	if err := s.write(op); err != nil {
		op.state, op.message = failed, err.Error()
		return
	}
	op.state = succeeded
}

// write writes op's objects into the bucket and records them for the manifest.
func (s *Server) write(op *operation) error {
	ctx := context.Background()
	files := map[string][]*resource{} // object name suffix -> lines
	var names []string
	add := func(name string, rs []*resource) {
		if len(rs) == 0 {
			return
		}
		if _, ok := files[name]; !ok {
			names = append(names, name)
		}
		files[name] = append(files[name], rs...)
	}
	switch {
	case op.kind == "group" && op.byPatient:
		members, err := s.store.members(op.group)
		if err != nil {
			return err
		}
		var others []*resource
		for _, m := range members {
			if m.typ == "Patient" {
				add("Patient", s.store.patientBlock(m, op.group, op.f))
			} else if op.f.keep(m) {
				others = append(others, m)
			}
		}
		groups := byType(others)
		for _, t := range sortedKeys(groups) {
			add(t, groups[t])
		}
		add("Group", []*resource{op.group})
	case op.kind == "group":
		members, err := s.store.members(op.group)
		if err != nil {
			return err
		}
		seen := map[*resource]bool{}
		var all []*resource
		for _, m := range members {
			block := []*resource{m}
			if m.typ == "Patient" {
				block = s.store.patientBlock(m, op.group, filter{})
			}
			for _, r := range block {
				if !seen[r] && op.f.keep(r) {
					seen[r] = true
					all = append(all, r)
				}
			}
		}
		all = append(all, op.group)
		groups := byType(all)
		for _, t := range sortedKeys(groups) {
			add(t, groups[t])
		}
	default:
		groups := byType(s.store.selectAll(op.f))
		for _, t := range sortedKeys(groups) {
			add(t, groups[t])
		}
	}
	total := 0
	for _, name := range names {
		key := op.keyPrefix + name
		if op.kind != "store" {
			key = op.keyPrefix + op.id + "_" + name + ".ndjson"
		}
		if err := writeObject(ctx, s.opts.Bucket, key, raws(files[name])); err != nil {
			return err
		}
		total += len(files[name])
		op.output = append(op.output, manifestEntry{Type: name, URL: "gs://" + s.opts.BucketName + "/" + key})
	}
	op.total = total
	if s.faults.ManifestError && op.kind != "store" {
		key := op.keyPrefix + op.id + "_errors_OperationOutcome.ndjson"
		line := []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"injected export error"}]}`)
		if err := writeObject(ctx, s.opts.Bucket, key, [][]byte{line}); err != nil {
			return err
		}
		op.errors = append(op.errors, manifestEntry{Type: "OperationOutcome", URL: "gs://" + s.opts.BucketName + "/" + key})
	}
	return nil
}

func (s *Server) fhirStatus(w http.ResponseWriter, op *operation) {
	s.advance(op)
	switch op.state {
	case running:
		s.setRetryAfter(w)
		w.Header().Set("X-Progress", "in progress")
		w.WriteHeader(http.StatusAccepted)
	case failed:
		fhirError(w, http.StatusInternalServerError, "processing", op.message)
	default:
		m := map[string]any{
			"transactionTime":     op.started.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
			"request":             op.requestURL,
			"requiresAccessToken": true,
			"output":              nonNil(op.output),
			"error":               nonNil(op.errors),
		}
		writeJSON(w, http.StatusOK, "application/json", m)
	}
}

func nonNil(e []manifestEntry) []manifestEntry {
	if e == nil {
		return []manifestEntry{}
	}
	return e
}

func (s *Server) fhirDelete(w http.ResponseWriter, op *operation) {
	if op.state != running {
		fhirError(w, http.StatusBadRequest, "processing", "operation is not running")
		return
	}
	op.state, op.ended = cancelled, s.opts.Now()
	s.cancels++
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) lroGet(w http.ResponseWriter, op *operation) {
	s.advance(op)
	writeJSON(w, http.StatusOK, "application/json", s.lroJSON(op))
}

func (s *Server) lroCancel(w http.ResponseWriter, op *operation) {
	if op.state != running {
		googleError(w, http.StatusBadRequest, "FAILED_PRECONDITION", "operation is not running")
		return
	}
	op.state, op.ended, op.message = cancelled, s.opts.Now(), "Operation was cancelled"
	s.cancels++
	writeJSON(w, http.StatusOK, "application/json", map[string]any{})
}

// lroJSON is op as a google.longrunning.Operation.
func (s *Server) lroJSON(op *operation) map[string]any {
	success, pending := int64(op.total), int64(0)
	if op.state == running {
		success = int64(op.total * op.polls / (s.opts.Polls + 1))
		pending = int64(op.total) - success
	}
	counter := map[string]string{}
	if success > 0 {
		counter["success"] = strconv.FormatInt(success, 10)
	}
	if pending > 0 {
		counter["pending"] = strconv.FormatInt(pending, 10)
	}
	if op.state == failed {
		counter["failure"] = strconv.Itoa(op.total)
		delete(counter, "success")
	}
	md := map[string]any{
		"@type":         "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata",
		"apiMethodName": "google.cloud.healthcare.v1.fhir.FhirStoreService.ExportResources",
		"createTime":    op.started.UTC().Format(time.RFC3339Nano),
		"counter":       counter,
	}
	out := map[string]any{"name": s.datasetName + "/operations/" + op.id, "metadata": md}
	if op.state == running {
		return out
	}
	md["endTime"] = op.ended.UTC().Format(time.RFC3339Nano)
	out["done"] = true
	switch op.state {
	case succeeded:
		out["response"] = map[string]any{"@type": "type.googleapis.com/google.cloud.healthcare.v1.fhir.ExportResourcesResponse"}
	case failed:
		out["error"] = map[string]any{"code": 13, "message": op.message}
	case cancelled:
		md["cancelRequested"] = true
		out["error"] = map[string]any{"code": 1, "message": op.message}
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, contentType string, v any) {
	w.Header().Set("Content-Type", contentType+"; charset=utf-8")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// googleError answers with the Google API error shape.
func googleError(w http.ResponseWriter, code int, status, msg string) {
	writeJSON(w, code, "application/json", map[string]any{
		"error": map[string]any{"code": code, "message": msg, "status": status},
	})
}

// fhirError answers with an OperationOutcome, as the FHIR endpoints do.
func fhirError(w http.ResponseWriter, code int, issueCode, msg string) {
	writeJSON(w, code, "application/fhir+json", map[string]any{
		"resourceType": "OperationOutcome",
		"issue": []map[string]any{{
			"severity": "error", "code": issueCode, "details": map[string]string{"text": msg},
		}},
	})
}
