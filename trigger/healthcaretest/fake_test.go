package healthcaretest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob/memblob"
	"google.golang.org/api/googleapi"
	healthcare "google.golang.org/api/healthcare/v1"

	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newFake(t *testing.T, opts healthcaretest.Options) (*healthcaretest.Server, *healthcare.Service, *clock) {
	t.Helper()
	c := &clock{now: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)}
	bucket := memblob.OpenBucket(nil)
	t.Cleanup(func() { bucket.Close() })
	opts.Bucket = bucket
	if opts.Now == nil {
		opts.Now = c.Now
	}
	s, err := healthcaretest.New("testdata/store", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	svc, err := s.Service(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s, svc, c
}

// bulk starts a system export with the given headers and query and returns the response, body read.
func bulk(t *testing.T, svc *healthcare.Service, store string, prefer bool, set func(*healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall)) (*http.Response, string) {
	t.Helper()
	call := svc.Projects.Locations.Datasets.FhirStores.Fhir.BulkExport(store)
	if prefer {
		call.Header().Set("Prefer", "respond-async")
	}
	call.Header().Set("Accept", "application/fhir+json")
	if set != nil {
		set(call)
	}
	res, err := call.Context(context.Background()).Do()
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestBulkStartChecks(t *testing.T) {
	tests := []struct {
		name     string
		prefer   bool
		set      func(*healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall)
		wantCode int
		wantText string
	}{
		{name: "accepted", prefer: true, wantCode: http.StatusAccepted},
		{name: "no Prefer", prefer: false, wantCode: http.StatusBadRequest, wantText: "respond-async"},
		{name: "since with zone and fraction", prefer: true, wantCode: http.StatusAccepted,
			set: func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) {
				c.Since("2015-02-07T13:28:17.239+02:00")
			}},
		{name: "since without zone", prefer: true, wantCode: http.StatusBadRequest, wantText: "_since",
			set: func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) {
				c.Since("2017-01-01T00:00:00")
			}},
		{name: "since without seconds", prefer: true, wantCode: http.StatusBadRequest, wantText: "_since",
			set: func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) {
				c.Since("2017-01-01T00:00Z")
			}},
		{name: "since a date", prefer: true, wantCode: http.StatusBadRequest, wantText: "_since",
			set: func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) { c.Since("2017-01-01") }},
		{name: "unknown type", prefer: true, wantCode: http.StatusBadRequest, wantText: "Patients",
			set: func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) { c.Type("Patient,Patients") }},
		{name: "output format", prefer: true, wantCode: http.StatusBadRequest, wantText: "outputFormat",
			set: func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) { c.OutputFormat("text/csv") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, svc, _ := newFake(t, healthcaretest.Options{})
			res, body := bulk(t, svc, s.StoreName(), tt.prefer, tt.set)
			if res.StatusCode != tt.wantCode {
				t.Fatalf("HTTP %d %s, want %d", res.StatusCode, body, tt.wantCode)
			}
			wantStarts := 0
			if tt.wantCode == http.StatusAccepted {
				wantStarts = 1
				loc := res.Header.Get("Content-Location")
				if !strings.HasPrefix(loc, s.URL()+"/v1/"+s.StoreName()+"/operations/") {
					t.Errorf("Content-Location %q", loc)
				}
			} else {
				var o struct {
					ResourceType string
					Issue        []struct{ Details struct{ Text string } }
				}
				if err := json.Unmarshal([]byte(body), &o); err != nil || o.ResourceType != "OperationOutcome" ||
					len(o.Issue) != 1 || !strings.Contains(o.Issue[0].Details.Text, tt.wantText) {
					t.Errorf("body %s, want an OperationOutcome about %s", body, tt.wantText)
				}
			}
			if s.Starts() != wantStarts {
				t.Errorf("Starts() = %d, want %d", s.Starts(), wantStarts)
			}
		})
	}
}

func TestGroupStartChecks(t *testing.T) {
	tests := []struct {
		name     string
		group    string
		organize string
		wantCode int
	}{
		{name: "existing group", group: "g1", wantCode: http.StatusAccepted},
		{name: "by patient", group: "g1", organize: "Patient", wantCode: http.StatusAccepted},
		{name: "by encounter", group: "g1", organize: "Encounter", wantCode: http.StatusBadRequest},
		{name: "missing group", group: "g2", wantCode: http.StatusNotFound},
		{name: "a patient is not a group", group: "p1", wantCode: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, svc, _ := newFake(t, healthcaretest.Options{})
			call := svc.Projects.Locations.Datasets.FhirStores.BulkExportGroup(s.StoreName() + "/fhir/Group/" + tt.group)
			call.Header().Set("Prefer", "respond-async")
			if tt.organize != "" {
				call.OrganizeOutputBy(tt.organize)
			}
			res, err := call.Context(context.Background()).Do()
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tt.wantCode {
				t.Errorf("HTTP %d, want %d", res.StatusCode, tt.wantCode)
			}
		})
	}
}

// TestPollsReached: the channel of PollsReached(n) is closed by the n-th status poll, before its answer, and at
// once when n polls were answered already.
func TestPollsReached(t *testing.T) {
	ctx := context.Background()
	s, svc, _ := newFake(t, healthcaretest.Options{Faults: healthcaretest.Faults{NeverComplete: true}})
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	one, two := s.PollsReached(1), s.PollsReached(2)
	op, err := svc.Projects.Locations.Datasets.FhirStores.Export(s.StoreName(), &healthcare.ExportResourcesRequest{
		GcsDestination: &healthcare.GoogleCloudHealthcareV1FhirGcsDestination{UriPrefix: "gs://fake-bucket/x"},
	}).Context(ctx).Do()
	if err != nil {
		t.Fatal(err)
	}
	if closed(one) || closed(two) {
		t.Fatal("a channel closed before any poll")
	}
	poll := func() {
		t.Helper()
		if _, err := svc.Projects.Locations.Datasets.Operations.Get(op.Name).Context(ctx).Do(); err != nil {
			t.Fatal(err)
		}
	}
	poll()
	if !closed(one) || closed(two) {
		t.Fatalf("after one poll: PollsReached(1) closed %v, PollsReached(2) closed %v", closed(one), closed(two))
	}
	poll()
	if !closed(two) || !closed(s.PollsReached(2)) || closed(s.PollsReached(3)) {
		t.Fatal("after two polls: PollsReached(2) open, or PollsReached(3) closed")
	}
}

func TestStoreExportLRO(t *testing.T) {
	ctx := context.Background()
	s, svc, c := newFake(t, healthcaretest.Options{Polls: 1, Delay: time.Minute})
	fs := svc.Projects.Locations.Datasets.FhirStores

	if _, err := fs.Export(s.StoreName(), &healthcare.ExportResourcesRequest{
		GcsDestination: &healthcare.GoogleCloudHealthcareV1FhirGcsDestination{UriPrefix: "gs://other/x"},
	}).Context(ctx).Do(); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("export to another bucket: %v, want HTTP 400", err)
	}
	if _, err := fs.Export(s.StoreName(), &healthcare.ExportResourcesRequest{
		GcsDestination: &healthcare.GoogleCloudHealthcareV1FhirGcsDestination{UriPrefix: "gs://fake-bucket/x"}, Since: "yesterday",
	}).Context(ctx).Do(); err == nil || !strings.Contains(err.Error(), "_since") {
		t.Errorf("export with a bad _since: %v, want a refusal", err)
	}

	op, err := fs.Export(s.StoreName(), &healthcare.ExportResourcesRequest{
		GcsDestination: &healthcare.GoogleCloudHealthcareV1FhirGcsDestination{UriPrefix: "gs://fake-bucket/x"},
		Type:           "Patient",
	}).Context(ctx).Do()
	if err != nil {
		t.Fatal(err)
	}
	if s.Starts() != 1 || !strings.HasPrefix(op.Name, "projects/fake-project/locations/us-central1/datasets/fake-dataset/operations/") {
		t.Fatalf("starts %d, operation %q", s.Starts(), op.Name)
	}
	get := func() (*healthcare.Operation, healthcare.OperationMetadata) {
		t.Helper()
		op, err := svc.Projects.Locations.Datasets.Operations.Get(op.Name).Context(ctx).Do()
		if err != nil {
			t.Fatal(err)
		}
		var md healthcare.OperationMetadata
		if err := json.Unmarshal(op.Metadata, &md); err != nil {
			t.Fatal(err)
		}
		return op, md
	}
	// Two polls are not enough while the minute of Delay has not passed.
	for i := 0; i < 2; i++ {
		if got, _ := get(); got.Done {
			t.Fatalf("poll %d: done before the delay", i+1)
		}
	}
	c.Add(time.Minute)
	got, md := get()
	if !got.Done || got.Error != nil || len(got.Response) == 0 {
		t.Fatalf("after the delay: %+v", got)
	}
	if md.Counter == nil || md.Counter.Success != 3 || md.CreateTime != "2024-01-02T03:04:05Z" || md.EndTime == "" {
		t.Errorf("metadata %+v counter %+v", md, md.Counter)
	}
	if s.Polls() != 3 {
		t.Errorf("Polls() = %d, want 3", s.Polls())
	}
	if _, err := svc.Projects.Locations.Datasets.Operations.Cancel(op.Name, &healthcare.CancelOperationRequest{}).Context(ctx).Do(); err == nil {
		t.Error("cancel of a finished export succeeded")
	}
}

func TestBulkStatusProtocol(t *testing.T) {
	ctx := context.Background()
	s, svc, _ := newFake(t, healthcaretest.Options{Polls: 1, RetryAfter: 3 * time.Second})
	res, _ := bulk(t, svc, s.StoreName(), true, func(c *healthcare.ProjectsLocationsDatasetsFhirStoresFhirBulkExportCall) {
		c.Type("Organization")
	})
	name := strings.TrimPrefix(res.Header.Get("Content-Location"), s.URL()+"/v1/")
	status := func() (*http.Response, string) {
		t.Helper()
		call := svc.Projects.Locations.Datasets.FhirStores.Operations.GetFhirOperationStatus(name)
		res, err := call.Context(ctx).Do()
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	r1, _ := status()
	if r1.StatusCode != http.StatusAccepted || r1.Header.Get("X-Progress") == "" || r1.Header.Get("Retry-After") != "3" {
		t.Errorf("first status: HTTP %d headers %v", r1.StatusCode, r1.Header)
	}
	r2, body := status()
	if r2.StatusCode != http.StatusOK {
		t.Fatalf("second status: HTTP %d", r2.StatusCode)
	}
	var m struct {
		TransactionTime string
		Request         string
		Output          []struct{ Type, URL string }
		Error           []struct{ Type, URL string }
	}
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	id := name[strings.LastIndex(name, "/")+1:]
	if m.TransactionTime != "2024-01-02T03:04:05.000Z" || len(m.Output) != 1 || m.Output[0].Type != "Organization" ||
		m.Output[0].URL != "gs://fake-bucket/bulk/"+id+"_Organization.ndjson" || m.Error == nil || !strings.Contains(m.Request, "_type=Organization") {
		t.Errorf("manifest %s", body)
	}
	del := svc.Projects.Locations.Datasets.FhirStores.Operations.DeleteFhirOperation(name)
	dres, err := del.Context(ctx).Do()
	if err != nil {
		t.Fatal(err)
	}
	dres.Body.Close()
	if dres.StatusCode < 400 || s.Cancels() != 0 {
		t.Errorf("delete of a finished export: HTTP %d, cancels %d", dres.StatusCode, s.Cancels())
	}
}

func TestFaultsAreDeterministic(t *testing.T) {
	codes := func() []int {
		s, svc, _ := newFake(t, healthcaretest.Options{Faults: healthcaretest.Faults{Seed: 42, Transient: 0.5}})
		var out []int
		for i := 0; i < 20; i++ {
			res, err := svc.Projects.Locations.Datasets.FhirStores.Get(s.StoreName()).Context(context.Background()).Do()
			code := http.StatusOK
			var ge *googleapi.Error
			if errors.As(err, &ge) {
				code = ge.Code
			} else if err != nil {
				t.Fatal(err)
			} else if res.BulkExportGcsDestination.UriPrefix != "gs://fake-bucket/bulk/" {
				t.Errorf("store %+v", res)
			}
			out = append(out, code)
		}
		if s.Injected() == 0 || s.Injected() == 20 || s.Requests() != 20 {
			t.Errorf("%d of %d requests injected", s.Injected(), s.Requests())
		}
		return out
	}
	a, b := codes(), codes()
	if !slices.Equal(a, b) {
		t.Errorf("two runs with one seed differ: %v and %v", a, b)
	}
	for _, c := range a {
		if c != http.StatusOK && c != http.StatusTooManyRequests && c != http.StatusServiceUnavailable {
			t.Errorf("unexpected code %d", c)
		}
	}
}

func TestLoadRejectsBadStore(t *testing.T) {
	bucket := memblob.OpenBucket(nil)
	defer bucket.Close()
	if _, err := healthcaretest.New(t.TempDir(), healthcaretest.Options{Bucket: bucket}); err == nil {
		t.Error("New over an empty directory succeeded")
	}
	if _, err := healthcaretest.New("testdata/store", healthcaretest.Options{}); err == nil {
		t.Error("New without a bucket succeeded")
	}
}

// TestFaultsOnPollsOnly: with PollsOnly, the export starts and the store answers while every status poll fails.
func TestFaultsOnPollsOnly(t *testing.T) {
	ctx := context.Background()
	s, svc, _ := newFake(t, healthcaretest.Options{Faults: healthcaretest.Faults{Seed: 1, Transient: 1, PollsOnly: true}})
	if _, err := svc.Projects.Locations.Datasets.FhirStores.Get(s.StoreName()).Context(ctx).Do(); err != nil {
		t.Fatalf("store get: %v", err)
	}
	res, _ := bulk(t, svc, s.StoreName(), true, nil)
	if res.StatusCode != http.StatusAccepted || s.Starts() != 1 {
		t.Fatalf("start: HTTP %d, %d starts", res.StatusCode, s.Starts())
	}
	name := strings.TrimPrefix(res.Header.Get("Content-Location"), s.URL()+"/v1/")
	for range 3 {
		res, err := svc.Projects.Locations.Datasets.FhirStores.Operations.GetFhirOperationStatus(name).Context(ctx).Do()
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("poll: HTTP %d, want an injected 429 or 503", res.StatusCode)
		}
	}
	if s.Injected() != 3 || s.Polls() != 0 {
		t.Errorf("%d injected, %d polls answered; want 3 and 0", s.Injected(), s.Polls())
	}
}
