package sinks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// The ledger is the record of message-driven runs, kept in the output bucket beside what they publish:
//
//	OUT/_runs/<run_id>/state.json          the run's state (RunState), claimed create-if-absent
//	OUT/_runs/<run_id>/attempt-NNNNNN      one empty object per take-over, created create-if-absent
//	OUT/_runs/_last/<store hash>.json      the last published run of a store into OUT (LastRun), for since "last"
//
// It lives in sinks because it is a run record on the output bucket, written whole through the same atomic commit
// as the manifest, and because create-if-absent (blob.WriterOptions.IfNotExist, a generation-0 precondition on
// Cloud Storage) is a storage concern; the worker in cmd decides what the states mean. On a local directory
// (fileblob) create-if-absent is a stat followed by a rename: two workers claiming one run at the same instant
// there can both win, so a local output is for one worker at a time. Reads of the ledger skip
// nothing the output readers need: every key starts with "_", which reader.List and RemoveStale leave alone.

// Run states, in the order a run goes through them. Published and failed are final.
const (
	RunClaimed    = "claimed"
	RunExporting  = "exporting"
	RunConverting = "converting"
	RunPublished  = "published"
	RunFailed     = "failed"
)

// ErrRunClaimed is returned when the object a claim creates already exists: another worker holds the run (or did).
var ErrRunClaimed = errors.New("run already claimed")

// RunState is OUT/_runs/<run_id>/state.json. Opaque values (the message, the export handle) are kept as their owners
// encode them.
type RunState struct {
	RunID string `json:"run_id"`
	State string `json:"state"`
	// Attempt counts the workers that took the run on (1 for the claim); each take-over adds one.
	Attempt int    `json:"attempt"`
	Owner   string `json:"owner"` // the worker instance holding the run
	// Lease is when the owner's hold ends unless renewed; zero means released (a redelivery may take over at once).
	Lease   time.Time       `json:"lease"`
	Updated time.Time       `json:"updated"`
	Message json.RawMessage `json:"message,omitempty"`
	// Since is the _since the export was started with (RFC 3339), "" for none.
	Since string `json:"since,omitempty"`
	// ExportRequests counts the calls made to start the run's export, each recorded before it is made. More than
	// one means a holder died after asking and before recording the handle: that export may be running unknown.
	ExportRequests int `json:"export_requests,omitempty"`
	// Export is the export handle, from the exporting state on.
	Export json.RawMessage `json:"export,omitempty"`
	// TransactionTime is the export's transactionTime, from the converting state on.
	TransactionTime string `json:"transaction_time,omitempty"`
	// Manifest is the key of the published manifest, relative to OUT.
	Manifest string `json:"manifest,omitempty"`
	// Reason says why a run failed: the error, without resource content.
	Reason string `json:"reason,omitempty"`
	// Resume, on a failed run, is the state a redelivery resumes it from: it failed in a way a retry may mend (a
	// service unavailable past the retry budget). A failed run without Resume failed for good.
	Resume string `json:"resume,omitempty"`
}

// Final reports whether the run is over: published, or failed for good.
func (s RunState) Final() bool {
	return s.State == RunPublished || s.State == RunFailed && s.Resume == ""
}

// LastRun is the last published run of a store into an output: OUT/_runs/_last/<store hash>.json.
type LastRun struct {
	Store           string    `json:"store"`
	RunID           string    `json:"run_id"`
	TransactionTime string    `json:"transaction_time"` // RFC 3339, as the export reported it
	Published       time.Time `json:"published"`
}

const runsDir = "_runs/"

func runKey(out, runID, name string) string { return ObjectKey(out, runsDir+runID+"/"+name) }

// checkRunID refuses a run id that is not one plain path segment: 1 to 63 ASCII letters, digits, '.', '_' and '-',
// starting with a letter or digit (so never ".", ".." or a name of ours such as "_last").
func checkRunID(id string) error {
	ok := len(id) > 0 && len(id) <= 63
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		alnum := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		ok = alnum || i > 0 && (c == '.' || c == '_' || c == '-')
	}
	if !ok {
		return fmt.Errorf("run id %q is not 1 to 63 letters, digits, '.', '_' or '-' starting with a letter or digit", id)
	}
	return nil
}

func lastKey(out, store string) string {
	sum := sha256.Sum256([]byte(store))
	return ObjectKey(out, runsDir+"_last/"+hex.EncodeToString(sum[:8])+".json")
}

// ClaimRun creates OUT/_runs/<st.RunID>/state.json if it does not exist. When it does, the error wraps ErrRunClaimed.
func ClaimRun(ctx context.Context, b *blob.Bucket, out string, st RunState) error {
	if err := checkRunID(st.RunID); err != nil {
		return fmt.Errorf("claim run: %w", err)
	}
	data, err := encodeJSON(st)
	if err != nil {
		return fmt.Errorf("encode run state %s: %w", st.RunID, err)
	}
	if err := createObject(ctx, b, runKey(out, st.RunID, "state.json"), data); err != nil {
		return fmt.Errorf("claim run %s: %w", st.RunID, err)
	}
	return nil
}

// TakeOverRun makes st's worker the holder of a run another worker left: it creates
// OUT/_runs/<run_id>/attempt-<st.Attempt> if it does not exist (so that of two workers taking over the same attempt
// only one wins; the other gets ErrRunClaimed), then writes st.
func TakeOverRun(ctx context.Context, b *blob.Bucket, out string, st RunState) error {
	if err := checkRunID(st.RunID); err != nil {
		return fmt.Errorf("take over run: %w", err)
	}
	if err := createObject(ctx, b, runKey(out, st.RunID, fmt.Sprintf("attempt-%06d", st.Attempt)), nil); err != nil {
		return fmt.Errorf("take over run %s (attempt %d): %w", st.RunID, st.Attempt, err)
	}
	return WriteRun(ctx, b, out, st)
}

// RunAttemptCreated returns when OUT/_runs/<run_id>/attempt-<attempt> was created. When it does not exist, the error
// wraps os.ErrNotExist.
func RunAttemptCreated(ctx context.Context, b *blob.Bucket, out, runID string, attempt int) (time.Time, error) {
	key := runKey(out, runID, fmt.Sprintf("attempt-%06d", attempt))
	attrs, err := b.Attributes(ctx, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return time.Time{}, fmt.Errorf("%s: %w", key, errors.Join(os.ErrNotExist, err))
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read attributes of %s: %w", key, err)
	}
	return attrs.ModTime, nil
}

// WriteRun replaces the run's state. Only the holder of the run calls it.
func WriteRun(ctx context.Context, b *blob.Bucket, out string, st RunState) error {
	if err := checkRunID(st.RunID); err != nil {
		return fmt.Errorf("record run: %w", err)
	}
	data, err := encodeJSON(st)
	if err != nil {
		return fmt.Errorf("encode run state %s: %w", st.RunID, err)
	}
	if err := writeObject(ctx, b, runKey(out, st.RunID, "state.json"), jsonType, data); err != nil {
		return fmt.Errorf("record run %s %s: %w", st.RunID, st.State, err)
	}
	return nil
}

// ReadRun reads the run's state. When there is none, the error wraps os.ErrNotExist.
func ReadRun(ctx context.Context, b *blob.Bucket, out, runID string) (RunState, error) {
	if err := checkRunID(runID); err != nil {
		return RunState{}, fmt.Errorf("read run: %w", err)
	}
	var st RunState
	if err := readJSON(ctx, b, runKey(out, runID, "state.json"), &st); err != nil {
		return RunState{}, fmt.Errorf("read run %s: %w", runID, err)
	}
	return st, nil
}

// ReadLastRun reads the last published run of store into out. When there is none, the error wraps os.ErrNotExist.
func ReadLastRun(ctx context.Context, b *blob.Bucket, out, store string) (LastRun, error) {
	var l LastRun
	if err := readJSON(ctx, b, lastKey(out, store), &l); err != nil {
		return LastRun{}, fmt.Errorf("read last run of %s: %w", store, err)
	}
	if l.Store != store {
		return LastRun{}, fmt.Errorf("read last run of %s: the record is of %s", store, l.Store)
	}
	return l, nil
}

// WriteLastRun records l as the last published run of l.Store into out.
func WriteLastRun(ctx context.Context, b *blob.Bucket, out string, l LastRun) error {
	data, err := encodeJSON(l)
	if err != nil {
		return fmt.Errorf("encode last run of %s: %w", l.Store, err)
	}
	if err := writeObject(ctx, b, lastKey(out, l.Store), jsonType, data); err != nil {
		return fmt.Errorf("record last run of %s: %w", l.Store, err)
	}
	return nil
}

// encodeJSON is v as one line of JSON (embedded raw values stay as they are).
func encodeJSON(v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

func readJSON(ctx context.Context, b *blob.Bucket, key string, v any) error {
	data, err := b.ReadAll(ctx, key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return fmt.Errorf("%s: %w", key, errors.Join(os.ErrNotExist, err))
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", key, err)
	}
	return nil
}

// createObject writes data to key only if key does not exist yet; if it does, the error wraps ErrRunClaimed.
func createObject(ctx context.Context, b *blob.Bucket, key string, data []byte) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := b.NewWriter(wctx, key, &blob.WriterOptions{ContentType: jsonType, IfNotExist: true})
	if err != nil {
		return fmt.Errorf("open %s for writing: %w", key, err)
	}
	if _, err := w.Write(data); err != nil {
		cancel()
		w.Close()
		return fmt.Errorf("write %s: %w", key, err)
	}
	err = w.Close()
	if gcerrors.Code(err) == gcerrors.FailedPrecondition {
		return fmt.Errorf("%s exists: %w", key, ErrRunClaimed)
	}
	if err != nil {
		return fmt.Errorf("commit %s: %w", key, err)
	}
	return nil
}
