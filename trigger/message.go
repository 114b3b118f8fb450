package trigger

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/fhirlake/fhirlake/trigger/internal/fhirtypes"
)

// MessageVersion is the version of the Message document this package reads. A message of another version is poison.
const MessageVersion = 1

// SinceLast is the Message.Since value asking for the transactionTime of the previous successful run for the same
// store and output.
const SinceLast = "last"

// ErrPoison marks a message that can never succeed, however often it is delivered: it is not JSON, misses a field,
// names something malformed or outside the Policy's allow-lists. Callers dead-letter it and ack it; the error text
// (which never holds more of the message than its configuration fields) is the reason.
var ErrPoison = errors.New("poison message")

// Message is the document that starts a run, the body of a Pub/Sub message or the argument of a job (version 1):
//
//	{
//	  "version": 1,
//	  "store": "projects/p/locations/l/datasets/d/fhirStores/s",
//	  "kind": "store",                     // "store", "bulk" or "group"
//	  "group": "g1",                       // kind "group" only
//	  "types": ["Patient", "Observation"], // optional: every type when absent
//	  "since": "2024-05-01T00:00:00Z",     // optional: an instant with a zone, or "last"
//	  "output": "gs://lake/fhir",          // gs://bucket/prefix, file:///dir or mem://name
//	  "export_prefix": "gs://exports/fhir",// kind "store" only: where the export writes (a fresh prefix per run below it)
//	  "run_id": "2024-05-02"               // optional: derived from the rest when absent
//	}
//
// Unknown fields are refused, so that a misspelt field is never silently ignored.
type Message struct {
	Version      int      `json:"version"`
	Store        string   `json:"store"`
	Kind         Kind     `json:"kind"`
	Group        string   `json:"group,omitempty"`
	Types        []string `json:"types,omitempty"`
	Since        string   `json:"since,omitempty"`
	Output       string   `json:"output"`
	ExportPrefix string   `json:"export_prefix,omitempty"`
	RunID        string   `json:"run_id,omitempty"`
}

// Policy is what a deployment allows messages to name. An empty list allows nothing; the entry "*" allows anything.
type Policy struct {
	// Stores are FHIR store names (projects/.../fhirStores/...).
	Stores []string
	// Outputs are output locations: an output is allowed when it is an entry or lies below one
	// ("gs://lake" allows gs://lake/fhir; "file:///data" allows file:///data/out).
	Outputs []string
	// ExportPrefixes are where store exports may write (gs://bucket[/prefix]), entries or below, like Outputs. The
	// Healthcare API writes the whole export there, so a message must not choose a bucket of its own.
	ExportPrefixes []string
}

var runIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ParseMessage decodes, normalises and validates a message against p. Every failure wraps ErrPoison: nothing about
// a message changes on redelivery. The normalised message has its types sorted without duplicates, since in UTC,
// output and export_prefix without a trailing slash, and RunID set (DeriveRunID when the message had none).
func ParseMessage(data []byte, p Policy) (Message, error) {
	var m Message
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("%w: not a JSON message document: %v", ErrPoison, jsonReason(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return Message{}, fmt.Errorf("%w: not a JSON message document: data after the object", ErrPoison)
	}
	if err := m.normalise(); err != nil {
		return Message{}, err
	}
	if err := m.check(p); err != nil {
		return Message{}, err
	}
	if m.RunID == "" {
		m.RunID = m.DeriveRunID()
	}
	return m, nil
}

// jsonReason is a decoding error without the bytes of the document.
func jsonReason(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q must be a JSON %s", typ.Field, typ.Type.Kind())
	case errors.Is(err, io.EOF):
		return "empty"
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "not a JSON object"
}

func (m *Message) normalise() error {
	m.Output = strings.TrimRight(m.Output, "/")
	if strings.HasSuffix(m.Output, ":") { // "mem://" trimmed to "mem:"
		m.Output += "//"
	}
	m.ExportPrefix = strings.TrimRight(m.ExportPrefix, "/")
	if len(m.Types) > 0 {
		types := slices.Clone(m.Types)
		slices.Sort(types)
		m.Types = slices.Compact(types)
	}
	if m.Since != "" && m.Since != SinceLast {
		t, err := time.Parse(time.RFC3339Nano, m.Since)
		if err != nil {
			return fmt.Errorf("%w: since must be an instant with a time zone (RFC 3339) or %q", ErrPoison, SinceLast)
		}
		m.Since = t.UTC().Format(time.RFC3339Nano)
	}
	return nil
}

// check reports every problem with m at once.
func (m Message) check(p Policy) error {
	var errs []error
	if m.Version != MessageVersion {
		if m.Version == 0 {
			errs = append(errs, errors.New("version is missing"))
		} else {
			errs = append(errs, fmt.Errorf("version %d is not supported (this worker reads %d)", m.Version, MessageVersion))
		}
	}
	switch {
	case m.Store == "":
		errs = append(errs, errors.New("store is missing"))
	case !storeName.MatchString(m.Store):
		errs = append(errs, fmt.Errorf("store %q is not projects/{p}/locations/{l}/datasets/{d}/fhirStores/{s}", m.Store))
	case !allowed(p.Stores, m.Store, false):
		errs = append(errs, fmt.Errorf("store %q is not in the allowed stores", m.Store))
	}
	switch m.Kind {
	case KindStore, KindBulk, KindGroup:
	case "":
		errs = append(errs, errors.New("kind is missing"))
	default:
		errs = append(errs, fmt.Errorf("kind %q is not store, bulk or group", m.Kind))
	}
	if m.Kind == KindGroup && m.Group == "" {
		errs = append(errs, errors.New("group is missing (kind group)"))
	} else if m.Kind == KindGroup && !isGroupID(m.Group) {
		errs = append(errs, fmt.Errorf("group %q is not a FHIR id", m.Group))
	}
	if m.Kind != KindGroup && m.Group != "" {
		errs = append(errs, errors.New("group applies to kind group only"))
	}
	for _, t := range m.Types {
		if !fhirtypes.Known(t) {
			errs = append(errs, fmt.Errorf("type %q is not an R4 resource type", t))
		}
	}
	if err := checkOutput(m.Output); err != nil {
		errs = append(errs, err)
	} else if !allowed(p.Outputs, m.Output, true) {
		errs = append(errs, fmt.Errorf("output %q is not in the allowed outputs", m.Output))
	}
	switch {
	case m.Kind == KindStore && m.ExportPrefix == "":
		errs = append(errs, errors.New("export_prefix is missing (kind store)"))
	case m.Kind == KindStore:
		if err := checkExportPrefix(m.ExportPrefix); err != nil {
			errs = append(errs, err)
		} else if !allowed(p.ExportPrefixes, m.ExportPrefix, true) {
			errs = append(errs, fmt.Errorf("export_prefix %q is not in the allowed export prefixes", m.ExportPrefix))
		}
	case m.ExportPrefix != "":
		errs = append(errs, errors.New("export_prefix applies to kind store only (bulk and group exports write to the store's bulkExportGcsDestination)"))
	}
	if m.RunID != "" && (!runIDRE.MatchString(m.RunID)) {
		errs = append(errs, fmt.Errorf("run_id %q must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", m.RunID))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrPoison, err)
	}
	return nil
}

// gsBucket is a Cloud Storage bucket name: 3 to 63 lower-case letters, digits, '-', '_' and '.', starting and ending
// with a letter or digit (up to 222 with dots).
var gsBucket = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$`)

// plainLocation refuses what no location needs and what could make two spellings of one place: percent escapes
// (the allow-lists compare the text, the bucket sees the decoded path), backslashes, and bytes below 0x20 or 0x7f.
func plainLocation(what, loc string) error {
	for i := 0; i < len(loc); i++ {
		if c := loc[i]; c < 0x20 || c == 0x7f || c == '%' || c == '\\' {
			return fmt.Errorf("%s %q holds a percent escape, a backslash or a control character", what, loc)
		}
	}
	return nil
}

// reservedSegments are fhirlake's own names in an output (the ledger, quarantine, link table, manifest): another
// run's output must not lie inside them.
var reservedSegments = []string{"_runs", "_rejects", "_patient_links", "_manifest.json"}

// checkSegments refuses empty, "." and ".." segments in path and, when reserved, reservedSegments.
func checkSegments(what, loc, path string, reserved bool) error {
	path = strings.TrimPrefix(path, "/")
	if path == "" {
		return nil
	}
	for _, seg := range strings.Split(path, "/") {
		switch {
		case seg == ".." || seg == ".":
			return fmt.Errorf("%s %q has a relative path segment", what, loc)
		case seg == "":
			return fmt.Errorf("%s %q has an empty path segment", what, loc)
		case reserved && slices.Contains(reservedSegments, seg):
			return fmt.Errorf("%s %q has a path segment %s, which fhirlake reserves for its own objects", what, loc, seg)
		}
	}
	return nil
}

// checkExportPrefix accepts gs://bucket[/prefix] with a valid bucket name and a plain path.
func checkExportPrefix(loc string) error {
	if err := plainLocation("export_prefix", loc); err != nil {
		return err
	}
	b, prefix, err := parseGS(loc)
	if err != nil {
		return fmt.Errorf("export_prefix: %w", err)
	}
	if !gsBucket.MatchString(b) {
		return fmt.Errorf("export_prefix %q is not gs://bucket/prefix with a Cloud Storage bucket name", loc)
	}
	return checkSegments("export_prefix", loc, strings.TrimSuffix(prefix, "/"), false)
}

// isGroupID reports whether id is a FHIR id that is also a plain path segment (the API's URL holds it).
func isGroupID(id string) bool { return fhirID.MatchString(id) && id != "." && id != ".." }

// checkOutput accepts gs://bucket[/prefix], file:///absolute/dir and mem://name.
func checkOutput(out string) error {
	if out == "" {
		return errors.New("output is missing")
	}
	if err := plainLocation("output", out); err != nil {
		return err
	}
	u, err := url.Parse(out)
	if err != nil || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("output %q is not gs://bucket/prefix, file:///dir or mem://name", out)
	}
	switch u.Scheme {
	case "gs":
		if u.Host == "" {
			return fmt.Errorf("output %q has no bucket", out)
		}
		if !gsBucket.MatchString(u.Host) {
			return fmt.Errorf("output %q does not name a Cloud Storage bucket", out)
		}
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return fmt.Errorf("output %q is not file:///absolute/dir", out)
		}
	case "mem":
	default:
		return fmt.Errorf("output %q is not gs://bucket/prefix, file:///dir or mem://name", out)
	}
	return checkSegments("output", out, u.Path, true)
}

// allowed reports whether v is in list, or (below) lies under one of its entries.
func allowed(list []string, v string, below bool) bool {
	for _, e := range list {
		e = strings.TrimRight(e, "/")
		switch {
		case e == "*", e == v:
			return true
		case below && strings.HasSuffix(e, ":"): // "mem://" or "gs://": a whole scheme
			if strings.HasPrefix(v, e+"//") {
				return true
			}
		case below && strings.HasPrefix(v, e+"/"):
			return true
		}
	}
	return false
}

// canonical is the message as the run id covers it: normalised, without run_id.
func (m Message) canonical() []byte {
	c := m
	c.RunID = ""
	data, _ := json.Marshal(c) // a struct of strings, ints and a []string: cannot fail
	return data
}

// DeriveRunID is the run id of a message without one: a hash of the normalised message, so that every delivery of
// the same message (and every identical message) maps to the same run. Set run_id to run the same request again.
func (m Message) DeriveRunID() string {
	sum := sha256.Sum256(append([]byte("fhirlake message v1\n"), m.canonical()...))
	return "r" + hex.EncodeToString(sum[:12])
}

// Encode is the normalised message as JSON, run_id included: what a run records in its ledger and manifest.
func (m Message) Encode() []byte {
	data, _ := json.Marshal(m)
	return data
}

// SinceTime is the instant of a since that is neither empty nor SinceLast.
func (m Message) SinceTime() (time.Time, bool) {
	if m.Since == "" || m.Since == SinceLast {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, m.Since)
	return t, err == nil
}

// Request is the export m asks for, exporting resources updated after since (zero: all) and, for KindStore, into
// destination (gs://bucket/prefix, which must be empty).
func (m Message) Request(since time.Time, destination string) Request {
	r := Request{Kind: m.Kind, Store: m.Store, Group: m.Group, Types: m.Types, Since: since}
	if m.Kind == KindStore {
		r.Destination = destination
	}
	return r
}

// PushRequest is the body Pub/Sub POSTs to a push endpoint.
type PushRequest struct {
	Message struct {
		Data        []byte            `json:"data"` // base64 in JSON
		Attributes  map[string]string `json:"attributes"`
		MessageID   string            `json:"messageId"`
		PublishTime time.Time         `json:"publishTime"`
	} `json:"message"`
	Subscription    string `json:"subscription"`
	DeliveryAttempt int    `json:"deliveryAttempt"`
}

// ParsePush decodes a push request body. A body that is not one wraps ErrPoison: Pub/Sub would deliver it again
// unchanged.
func ParsePush(body []byte) (PushRequest, error) {
	var p PushRequest
	if err := json.Unmarshal(body, &p); err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return PushRequest{}, fmt.Errorf("%w: push message data is not base64", ErrPoison)
		}
		return PushRequest{}, fmt.Errorf("%w: not a Pub/Sub push request: %v", ErrPoison, jsonReason(err))
	}
	if p.Message.MessageID == "" {
		return PushRequest{}, fmt.Errorf("%w: not a Pub/Sub push request: message.messageId is missing", ErrPoison)
	}
	return p, nil
}
