package trigger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/api/googleapi"
	healthcare "google.golang.org/api/healthcare/v1"
	"google.golang.org/api/option"
)

const (
	testStoreName = "projects/p/locations/l/datasets/d/fhirStores/s"
	testFhirOp    = testStoreName + "/operations/123"
	testLRO       = "projects/p/locations/l/datasets/d/operations/456"
)

func TestRequestValidate(t *testing.T) {
	tests := []struct {
		name    string
		req     Request
		wantErr string // "" for valid
	}{
		{name: "store", req: Request{Kind: KindStore, Store: testStoreName, Destination: "gs://b/x"}},
		{name: "bulk with types and since", req: Request{Kind: KindBulk, Store: testStoreName, Types: []string{"Patient"}, Since: time.Now()}},
		{name: "group by patient", req: Request{Kind: KindGroup, Store: testStoreName, Group: "g-1.a", ByPatient: true}},
		{name: "unknown kind", req: Request{Kind: "fhir", Store: testStoreName}, wantErr: "unknown export kind"},
		{name: "bad store", req: Request{Kind: KindBulk, Store: "projects/p/fhirStores/s"}, wantErr: "is not projects/"},
		{name: "group without id", req: Request{Kind: KindGroup, Store: testStoreName}, wantErr: "not a FHIR id"},
		{name: "group id with slash", req: Request{Kind: KindGroup, Store: testStoreName, Group: "a/b"}, wantErr: "not a FHIR id"},
		{name: "by patient on bulk", req: Request{Kind: KindBulk, Store: testStoreName, ByPatient: true}, wantErr: "group exports only"},
		{name: "unknown type", req: Request{Kind: KindBulk, Store: testStoreName, Types: []string{"Patients"}}, wantErr: "not an R4 resource type"},
		{name: "store without destination", req: Request{Kind: KindStore, Store: testStoreName}, wantErr: "not gs://"},
		{name: "store destination without bucket", req: Request{Kind: KindStore, Store: testStoreName, Destination: "gs:///x"}, wantErr: "no bucket"},
		{name: "destination on bulk", req: Request{Kind: KindBulk, Store: testStoreName, Destination: "gs://b/x"}, wantErr: "store exports only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if tt.wantErr == "" && err != nil {
				t.Errorf("Validate: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseHandle(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		wantErr bool
	}{
		{name: "bulk", json: `{"kind":"bulk","operation":"` + testFhirOp + `","started":"2024-01-01T00:00:00Z"}`},
		{name: "store", json: `{"kind":"store","operation":"` + testLRO + `","destination":"gs://b/x/"}`},
		{name: "store without destination", json: `{"kind":"store","operation":"` + testLRO + `"}`, wantErr: true},
		{name: "bulk with an LRO name", json: `{"kind":"bulk","operation":"` + testLRO + `"}`, wantErr: true},
		{name: "unknown kind", json: `{"kind":"x","operation":"` + testFhirOp + `"}`, wantErr: true},
		{name: "not JSON", json: `kind=bulk`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseHandle([]byte(tt.json))
			if (err != nil) != tt.wantErr {
				t.Errorf("ParseHandle: %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestTypeFromName(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{name: "store export", in: "Patient", want: "Patient"},
		{name: "bulk export", in: "1234_Observation.ndjson", want: "Observation"},
		{name: "gzipped", in: "Encounter.ndjson.gz", want: "Encounter"},
		{name: "underscore in id", in: "a_b_MedicationRequest.ndjson", want: "MedicationRequest"},
		{name: "unknown", in: "part-0001.ndjson", want: ""},
		{name: "lower case", in: "patient.ndjson", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := typeFromName(tt.in); got != tt.want {
				t.Errorf("typeFromName(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestOperationName(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{name: "full URL", in: "https://healthcare.googleapis.com/v1/" + testFhirOp, want: testFhirOp},
		{name: "bare name", in: testFhirOp, want: testFhirOp},
		{name: "leading slash", in: "/" + testFhirOp, want: testFhirOp},
		{name: "with query", in: "http://127.0.0.1:1/v1/" + testFhirOp + "?alt=json", want: testFhirOp},
		{name: "empty", in: "", wantErr: true},
		{name: "an LRO", in: testLRO, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := operationName(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("operationName(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseGS(t *testing.T) {
	tests := []struct{ name, in, bucket, prefix string }{
		{name: "prefix", in: "gs://b/dir", bucket: "b", prefix: "dir/"},
		{name: "prefix with slash", in: "gs://b/dir/sub/", bucket: "b", prefix: "dir/sub/"},
		{name: "bucket only", in: "gs://b", bucket: "b", prefix: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, p, err := parseGS(tt.in)
			if err != nil || b != tt.bucket || p != tt.prefix {
				t.Errorf("parseGS(%q) = %q, %q, %v", tt.in, b, p, err)
			}
		})
	}
}

func TestDelay(t *testing.T) {
	c := New(nil, Options{Floor: time.Second, Cap: 10 * time.Second, Jitter: 0.5, Rand: func() float64 { return 1 }})
	tests := []struct {
		name       string
		attempt    int
		retryAfter time.Duration
		want       time.Duration
	}{
		{name: "floor less jitter", attempt: 0, want: 500 * time.Millisecond},
		{name: "doubled", attempt: 2, want: 2 * time.Second},
		{name: "capped", attempt: 10, want: 5 * time.Second},
		{name: "huge attempt", attempt: 1000, want: 5 * time.Second},
		{name: "Retry-After as given", attempt: 3, retryAfter: 42 * time.Second, want: 42 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.delay(tt.attempt, tt.retryAfter); got != tt.want {
				t.Errorf("delay(%d, %v) = %v, want %v", tt.attempt, tt.retryAfter, got, tt.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	c := New(nil, Options{Now: func() time.Time { return now }})
	tests := []struct {
		name, in string
		want     time.Duration
	}{
		{name: "seconds", in: "120", want: 2 * time.Minute},
		{name: "date", in: now.Add(30 * time.Second).Format(http.TimeFormat), want: 30 * time.Second},
		{name: "past date", in: now.Add(-time.Hour).Format(http.TimeFormat), want: 0},
		{name: "absent", in: "", want: 0},
		{name: "garbage", in: "soon", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.in != "" {
				h.Set("Retry-After", tt.in)
			}
			if got := c.retryAfter(h); got != tt.want {
				t.Errorf("retryAfter(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestTransient(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "429", err: &googleapi.Error{Code: 429}, want: true},
		{name: "503 wrapped", err: fmt.Errorf("poll: %w", &googleapi.Error{Code: 503}), want: true},
		{name: "500", err: &googleapi.Error{Code: 500}, want: true},
		{name: "404", err: &googleapi.Error{Code: 404}, want: false},
		{name: "400", err: &googleapi.Error{Code: 400}, want: false},
		{name: "reset", err: &net.OpError{Op: "read", Err: syscall.ECONNRESET}, want: true},
		{name: "EOF", err: fmt.Errorf("Get x: %w", io.EOF), want: true},
		{name: "timeout", err: &net.DNSError{IsTimeout: true}, want: true},
		{name: "other", err: errors.New("malformed"), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := transient(tt.err); got != tt.want {
				t.Errorf("transient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestPollBulkAnswers feeds pollBulk each answer the status endpoint can give.
func TestPollBulkAnswers(t *testing.T) {
	const outcome = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":%q,"details":{"text":%q}}]}`
	tests := []struct {
		name          string
		code          int
		header        map[string]string
		body          string
		wantDone      bool
		wantFailed    string // substring
		wantTransient bool
		wantErr       bool
		wantRetry     time.Duration
	}{
		{name: "in progress", code: 202, header: map[string]string{"X-Progress": "50%", "Retry-After": "9"}, wantRetry: 9 * time.Second},
		{name: "complete", code: 200, body: `{"transactionTime":"2024-01-01T00:00:00Z","output":[],"error":[]}`, wantDone: true},
		{name: "complete with a bad body", code: 200, body: `<html>`, wantErr: true},
		{name: "export failed", code: 500, body: fmt.Sprintf(outcome, "processing", "ran out of luck"), wantDone: true, wantFailed: "ran out of luck"},
		{name: "poll failed, transient outcome", code: 503, body: fmt.Sprintf(outcome, "transient", "busy"), wantErr: true, wantTransient: true},
		{name: "front end 503", code: 503, body: `{"error":{"code":503,"message":"unavailable"}}`, wantErr: true, wantTransient: true},
		{name: "429", code: 429, header: map[string]string{"Retry-After": "4"}, body: `{"error":{"code":429,"message":"quota"}}`, wantErr: true, wantTransient: true, wantRetry: 4 * time.Second},
		{name: "not found", code: 404, body: fmt.Sprintf(outcome, "not-found", "no such operation"), wantErr: true},
		{name: "unexpected 204", code: 204, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/"+testFhirOp || r.Header.Get("Accept") != "application/fhir+json" {
					http.Error(w, "wrong request", http.StatusTeapot)
					return
				}
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.code)
				io.WriteString(w, tt.body)
			}))
			defer ts.Close()
			svc, err := healthcare.NewService(context.Background(), option.WithEndpoint(ts.URL+"/"), option.WithoutAuthentication())
			if err != nil {
				t.Fatal(err)
			}
			c := New(svc, Options{})
			st, err := c.pollBulk(context.Background(), Handle{Kind: KindBulk, Operation: testFhirOp})
			if (err != nil) != tt.wantErr {
				t.Fatalf("pollBulk: %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if transient(err) != tt.wantTransient {
					t.Errorf("transient(%v) = %v, want %v", err, !tt.wantTransient, tt.wantTransient)
				}
				if _, ra := c.statusOf(err); ra != tt.wantRetry {
					t.Errorf("Retry-After %v, want %v", ra, tt.wantRetry)
				}
				return
			}
			if st.done != tt.wantDone || !strings.Contains(st.failed, tt.wantFailed) || (tt.wantFailed == "") != (st.failed == "") {
				t.Errorf("status %+v", st)
			}
			if st.retryAfter != tt.wantRetry {
				t.Errorf("retryAfter %v, want %v", st.retryAfter, tt.wantRetry)
			}
		})
	}
}
