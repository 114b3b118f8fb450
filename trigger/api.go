package trigger

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/api/googleapi"
	healthcare "google.golang.org/api/healthcare/v1"
)

// status is one poll's answer.
type status struct {
	done   bool
	failed string // the export failed with this message
	// message, success, failure and pending feed Progress.
	message                   string
	success, failure, pending int64
	retryAfter                time.Duration
	createTime                time.Time // KindStore: when the operation was created
	manifest                  *manifest // bulk kinds, when done
}

// manifest is the Bulk Data complete-status body.
type manifest struct {
	TransactionTime string          `json:"transactionTime"`
	Request         string          `json:"request"`
	Output          []manifestEntry `json:"output"`
	Error           []manifestEntry `json:"error"`
}

type manifestEntry struct {
	Type string `json:"type"`
	URL  string `json:"url"`
}

// outcome is as much of an OperationOutcome as errors need. Its text comes from the service, not from resources.
type outcome struct {
	ResourceType string `json:"resourceType"`
	Issue        []struct {
		Severity    string `json:"severity"`
		Code        string `json:"code"`
		Diagnostics string `json:"diagnostics"`
		Details     struct {
			Text string `json:"text"`
		} `json:"details"`
	} `json:"issue"`
}

// maxBody bounds what is read of a status or error body (a manifest lists one entry per output file).
const maxBody = 32 << 20

// errTransientOutcome marks a status answer whose OperationOutcome says the failure is of the poll, not the export.
var errTransientOutcome = errors.New("transient failure")

func (c *Client) startStore(ctx context.Context, r Request) (string, error) {
	req := &healthcare.ExportResourcesRequest{
		GcsDestination: &healthcare.GoogleCloudHealthcareV1FhirGcsDestination{UriPrefix: r.Destination},
		Type:           strings.Join(r.Types, ","),
	}
	if !r.Since.IsZero() {
		req.Since = sinceParam(r.Since)
	}
	op, err := c.svc.Projects.Locations.Datasets.FhirStores.Export(r.Store, req).Context(ctx).Do()
	if err != nil {
		return "", err
	}
	if !lroName.MatchString(op.Name) {
		return "", fmt.Errorf("service returned operation name %q, not a dataset operation", op.Name)
	}
	return op.Name, nil
}

func (c *Client) startBulk(ctx context.Context, r Request) (string, error) {
	var res *http.Response
	var err error
	types := strings.Join(r.Types, ",")
	since := ""
	if !r.Since.IsZero() {
		since = sinceParam(r.Since)
	}
	switch r.Kind {
	case KindBulk:
		call := c.svc.Projects.Locations.Datasets.FhirStores.Fhir.BulkExport(r.Store)
		if types != "" {
			call.Type(types)
		}
		if since != "" {
			call.Since(since)
		}
		bulkHeaders(call.Header())
		res, err = call.Context(ctx).Do()
	case KindGroup:
		call := c.svc.Projects.Locations.Datasets.FhirStores.BulkExportGroup(r.Store + "/fhir/Group/" + r.Group)
		if types != "" {
			call.Type(types)
		}
		if since != "" {
			call.Since(since)
		}
		if r.ByPatient {
			call.OrganizeOutputBy("Patient")
		}
		bulkHeaders(call.Header())
		res, err = call.Context(ctx).Do()
	}
	if err != nil {
		return "", err
	}
	defer googleapi.CloseBody(res)
	body, err := readBody(res)
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusAccepted {
		return "", c.responseError(res, body)
	}
	name, err := operationName(res.Header.Get("Content-Location"))
	if err != nil {
		return "", err
	}
	return name, nil
}

func bulkHeaders(h http.Header) {
	h.Set("Prefer", "respond-async")
	h.Set("Accept", "application/fhir+json")
}

// operationName takes the status operation name out of a Content-Location, which may be a full URL
// (https://host/v1/projects/...) or the bare name.
func operationName(loc string) (string, error) {
	name := loc
	if u, err := url.Parse(loc); err == nil && u.Path != "" {
		name = u.Path
	}
	if i := strings.Index(name, "/v1/"); i >= 0 {
		name = name[i+len("/v1/"):]
	}
	name = strings.TrimPrefix(name, "/")
	if !fhirOpName.MatchString(name) {
		return "", fmt.Errorf("Content-Location %q does not name a FHIR store operation", loc)
	}
	return name, nil
}

func (c *Client) pollStore(ctx context.Context, h Handle) (status, error) {
	op, err := c.svc.Projects.Locations.Datasets.Operations.Get(h.Operation).Context(ctx).Do()
	if err != nil {
		return status{}, err
	}
	st := status{done: op.Done}
	if len(op.Metadata) > 0 {
		var md healthcare.OperationMetadata
		if err := json.Unmarshal(op.Metadata, &md); err != nil {
			return status{}, fmt.Errorf("decode operation metadata: %w", err)
		}
		if md.Counter != nil {
			st.success, st.failure, st.pending = md.Counter.Success, md.Counter.Failure, md.Counter.Pending
		}
		if md.CreateTime != "" {
			st.createTime, err = time.Parse(time.RFC3339Nano, md.CreateTime)
			if err != nil {
				return status{}, fmt.Errorf("decode operation createTime: %w", err)
			}
		}
	}
	if op.Done && op.Error != nil {
		st.failed = fmt.Sprintf("code %d: %s", op.Error.Code, op.Error.Message)
	}
	return st, nil
}

func (c *Client) pollBulk(ctx context.Context, h Handle) (status, error) {
	call := c.svc.Projects.Locations.Datasets.FhirStores.Operations.GetFhirOperationStatus(h.Operation)
	call.Header().Set("Accept", "application/fhir+json")
	res, err := call.Context(ctx).Do()
	if err != nil {
		return status{}, err
	}
	defer googleapi.CloseBody(res)
	body, err := readBody(res)
	if err != nil {
		return status{}, err
	}
	switch code := res.StatusCode; {
	case code == http.StatusAccepted:
		return status{message: res.Header.Get("X-Progress"), retryAfter: c.retryAfter(res.Header)}, nil
	case code == http.StatusOK:
		var m manifest
		if err := json.Unmarshal(body, &m); err != nil {
			return status{}, fmt.Errorf("decode export manifest: %w", err)
		}
		return status{done: true, message: res.Header.Get("X-Progress"), manifest: &m}, nil
	case code >= 500:
		if o, ok := parseOutcome(body); ok && !o.transient() {
			return status{done: true, failed: fmt.Sprintf("HTTP %d: %s", code, o.text())}, nil
		}
	}
	return status{}, c.responseError(res, body)
}

func (c *Client) deleteBulk(ctx context.Context, name string) error {
	call := c.svc.Projects.Locations.Datasets.FhirStores.Operations.DeleteFhirOperation(name)
	call.Header().Set("Accept", "application/fhir+json")
	res, err := call.Context(ctx).Do()
	if err != nil {
		return err
	}
	defer googleapi.CloseBody(res)
	body, err := readBody(res)
	if err != nil {
		return err
	}
	if res.StatusCode >= 300 {
		return c.responseError(res, body)
	}
	return nil
}

func readBody(res *http.Response) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("read response (HTTP %d): %w", res.StatusCode, err)
	}
	return b, nil
}

// responseError turns a response that is not what was expected into a *googleapi.Error (so that statusOf and
// transient see its code and headers). An OperationOutcome body gives the message.
func (c *Client) responseError(res *http.Response, body []byte) error {
	if res.StatusCode < 300 {
		return fmt.Errorf("unexpected response HTTP %d", res.StatusCode)
	}
	if o, ok := parseOutcome(body); ok {
		err := &googleapi.Error{Code: res.StatusCode, Message: o.text(), Header: res.Header}
		if o.transient() {
			return fmt.Errorf("%w: %w", errTransientOutcome, err)
		}
		return err
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	if err := googleapi.CheckResponse(res); err != nil {
		return err
	}
	return &googleapi.Error{Code: res.StatusCode, Header: res.Header}
}

func parseOutcome(body []byte) (outcome, bool) {
	var o outcome
	if json.Unmarshal(body, &o) != nil || o.ResourceType != "OperationOutcome" {
		return outcome{}, false
	}
	return o, true
}

// text joins the issues' details and diagnostics.
func (o outcome) text() string {
	var parts []string
	for _, is := range o.Issue {
		msg := is.Details.Text
		if msg == "" {
			msg = is.Diagnostics
		}
		parts = append(parts, fmt.Sprintf("%s %s: %s", is.Severity, is.Code, msg))
	}
	if len(parts) == 0 {
		return "OperationOutcome without issues"
	}
	return strings.Join(parts, "; ")
}

// transient reports whether every issue has a code of the transient family (the Bulk Data spec asks servers to use
// one when a status request failed but the export did not).
func (o outcome) transient() bool {
	if len(o.Issue) == 0 {
		return false
	}
	for _, is := range o.Issue {
		switch is.Code {
		case "transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled":
		default:
			return false
		}
	}
	return true
}

// statusOf returns the HTTP code of an API error and its Retry-After, if any.
func (c *Client) statusOf(err error) (int, time.Duration) {
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		return ge.Code, c.retryAfter(ge.Header)
	}
	return 0, 0
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func (c *Client) retryAfter(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return max(time.Duration(s)*time.Second, 0)
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(c.opts.Now()), 0)
	}
	return 0
}

// transient reports whether err is worth retrying: 408, 429 or 5xx, a transient OperationOutcome, a dropped or
// refused connection, a timeout.
func transient(err error) bool {
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		return ge.Code == http.StatusRequestTimeout || ge.Code == http.StatusTooManyRequests || ge.Code >= 500 ||
			errors.Is(err, errTransientOutcome)
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
