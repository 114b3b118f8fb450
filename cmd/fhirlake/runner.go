package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
	"google.golang.org/api/googleapi"
	healthcare "google.golang.org/api/healthcare/v1"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
)

// A runner turns a message into a published run, through the ledger in the output bucket. The three ways in
// (worker, serve, run) share it; they differ only in how a message arrives and how its outcome is answered.
//
// Published layout, for a message whose output is OUT and whose run id is R:
//
//	OUT/R/<Type>/part-NNNNN.parquet, OUT/R/_rejects/..., OUT/R/_manifest.json   the conversion's layout, under R
//	OUT/_runs/R/state.json                                                     the run's ledger entry (sinks.RunState)
//	OUT/_runs/_last/<store hash>.json                                          the store's last published run
type runner struct {
	log     *slog.Logger
	policy  trigger.Policy
	svc     *healthcare.Service
	trigger trigger.Options // per-run copies get OnProgress
	convert pipeline.Options
	outputs *outputs
	// openExportBucket opens the Cloud Storage bucket an export wrote to (zero: gs://name).
	openExportBucket func(ctx context.Context, name string) (*blob.Bucket, error)
	deadLetter       deadLetterer // nil: poison is only logged
	owner            string       // this worker instance, recorded in the ledger
	lease            time.Duration
	now              func() time.Time

	mu     sync.Mutex
	active map[string]bool // run ids in progress in this process
}

// deadLetterer records a poison message somewhere a person will look.
type deadLetterer interface {
	DeadLetter(ctx context.Context, d delivery, reason string) error
}

// delivery is one message as it arrived.
type delivery struct {
	Data       []byte
	Attributes map[string]string
	ID         string // Pub/Sub message id, "" for a job argument
	Source     string // subscription, "push" or "job"
}

// verdict is what to answer the sender.
type verdict int

const (
	ack  verdict = iota // done: published, already published, failed for good, or poison recorded
	nack                // try again later: transient failure, shutdown, or the run is held elsewhere
)

func (v verdict) String() string {
	if v == ack {
		return "ack"
	}
	return "nack"
}

// outcome is how one delivery ended.
type outcome struct {
	Verdict  verdict
	RunID    string
	State    string // the run's ledger state at the end ("" for poison)
	Poison   string // the reason, for poison
	Err      error  // the failure, if any
	Manifest *sinks.Manifest
	// Already is true when the run was published before this delivery (nothing was done).
	Already bool
}

// errBusy: the run is held by a live worker (or by this process).
var errBusy = errors.New("run is held by another worker")

// handle does what one delivery asks, end to end, and says whether to ack it.
func (r *runner) handle(ctx context.Context, d delivery) outcome {
	m, err := trigger.ParseMessage(d.Data, r.policy)
	if err != nil {
		return r.poison(ctx, d, err)
	}
	log := r.log.With("run_id", m.RunID)
	log.Info("message received", "message_id", d.ID, "source", d.Source, "kind", m.Kind, "output", m.Output)
	o := r.do(ctx, log, m)
	o.RunID = m.RunID
	switch {
	case o.Err != nil && o.Verdict == nack:
		log.Warn("run not finished; message nacked for a retry", "state", o.State, "err", o.Err)
	case o.Err != nil:
		log.Error("run failed; message acked", "state", o.State, "err", o.Err)
	case o.Already:
		log.Info("run already published; message acked", "state", o.State)
	default:
		log.Info("run published", "state", o.State)
	}
	return o
}

func (r *runner) poison(ctx context.Context, d delivery, err error) outcome {
	reason := strings.TrimPrefix(err.Error(), trigger.ErrPoison.Error()+": ")
	r.log.Error("poison message: dead-lettered and acked", "message_id", d.ID, "source", d.Source, "reason", reason)
	o := outcome{Verdict: ack, Poison: reason, Err: err}
	if r.deadLetter != nil {
		if derr := r.deadLetter.DeadLetter(ctx, d, reason); derr != nil {
			r.log.Error("record dead letter; message nacked", "message_id", d.ID, "err", derr)
			o.Verdict, o.Err = nack, errors.Join(err, derr)
		}
	}
	return o
}

// do runs m through the ledger.
func (r *runner) do(ctx context.Context, log *slog.Logger, m trigger.Message) outcome {
	if !r.begin(m.RunID) {
		return outcome{Verdict: nack, Err: fmt.Errorf("run %s: %w (in this process)", m.RunID, errBusy)}
	}
	defer r.end(m.RunID)

	b, prefix, closeOut, err := r.outputs.open(ctx, m.Output)
	if err != nil {
		return outcome{Verdict: nack, Err: err}
	}
	defer closeOut()
	h, err := r.acquire(ctx, b, prefix, m)
	if err != nil {
		return outcome{Verdict: nack, Err: err}
	}
	if h.st.Final() {
		o := outcome{Verdict: ack, State: h.st.State, Already: h.st.State == sinks.RunPublished}
		if h.st.State == sinks.RunFailed {
			o.Err = fmt.Errorf("run %s failed before: %s", m.RunID, h.st.Reason)
		}
		return o
	}
	log.Info("run held", "state", h.st.State, "attempt", h.st.Attempt)
	stop := h.renew(ctx, r.lease/3)
	mf, err := r.phases(ctx, log, h, m)
	stop()
	if err == nil {
		return outcome{Verdict: ack, State: sinks.RunPublished, Manifest: mf}
	}
	reason := err.Error()
	if permanent(err) {
		if serr := h.save(context.WithoutCancel(ctx), func(s *sinks.RunState) {
			s.State, s.Reason, s.Resume, s.Lease = sinks.RunFailed, reason, "", time.Time{}
		}); serr != nil {
			return outcome{Verdict: nack, State: h.state(), Err: errors.Join(err, serr)}
		}
		return outcome{Verdict: ack, State: sinks.RunFailed, Err: err}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if ctx.Err() != nil {
		// Shut down: release the lease so that a redelivery resumes at once, from the recorded state.
		if serr := h.save(rctx, func(s *sinks.RunState) { s.Lease = time.Time{} }); serr != nil {
			log.Warn("release run lease", "err", serr)
		}
		return outcome{Verdict: nack, State: h.state(), Err: err}
	}
	// Transient, past the retry budget: failed with the reason, and resumable from where it was; the nack makes
	// Pub/Sub deliver it again later.
	if serr := h.save(rctx, func(s *sinks.RunState) {
		s.Resume, s.State, s.Reason, s.Lease = s.State, sinks.RunFailed, reason, time.Time{}
	}); serr != nil {
		log.Warn("record run failure", "err", serr)
	}
	return outcome{Verdict: nack, State: h.state(), Err: err}
}

func (r *runner) begin(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active == nil {
		r.active = map[string]bool{}
	}
	if r.active[id] {
		return false
	}
	r.active[id] = true
	return true
}

func (r *runner) end(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.active, id)
}

// hold is this worker's hold on a run: its ledger entry, saved under a lock (the lease renewal runs beside the
// phases).
type hold struct {
	r      *runner
	b      *blob.Bucket
	prefix string
	mu     sync.Mutex
	st     sinks.RunState
}

func (h *hold) state() string {
	return h.snapshot().State
}

// snapshot returns the run's state as last saved. While the lease is being renewed, h.st is read only through it.
func (h *hold) snapshot() sinks.RunState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st
}

func (h *hold) save(ctx context.Context, change func(*sinks.RunState)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.st
	change(&st)
	return h.write(ctx, st)
}

// extend renews the lease, unless it was released (the run ended, or is being left): a renewal that lost the race
// with the last write must not take the run back.
func (h *hold) extend(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.st.Lease.IsZero() {
		return nil
	}
	st := h.st
	st.Lease = h.r.now().Add(h.r.lease).UTC()
	return h.write(ctx, st)
}

// write records st as the run's state; h.mu is held.
func (h *hold) write(ctx context.Context, st sinks.RunState) error {
	st.Updated = h.r.now().UTC()
	if err := sinks.WriteRun(ctx, h.b, h.prefix, st); err != nil {
		return err
	}
	h.st = st
	return nil
}

// renew extends the lease every period until stop is called.
func (h *hold) renew(ctx context.Context, period time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	runID := h.snapshot().RunID
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := h.extend(ctx); err != nil && ctx.Err() == nil {
					h.r.log.Warn("renew run lease", "run_id", runID, "err", err)
				}
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

// acquire claims the run, or takes over one that no live worker holds. A final run is returned as it is.
func (r *runner) acquire(ctx context.Context, b *blob.Bucket, prefix string, m trigger.Message) (*hold, error) {
	now := r.now().UTC()
	st := sinks.RunState{
		RunID: m.RunID, State: sinks.RunClaimed, Attempt: 1, Owner: r.owner,
		Lease: now.Add(r.lease), Updated: now, Message: m.Encode(),
	}
	h := &hold{r: r, b: b, prefix: prefix, st: st}
	err := sinks.ClaimRun(ctx, b, prefix, st)
	if err == nil {
		return h, nil
	}
	if !errors.Is(err, sinks.ErrRunClaimed) {
		return nil, err
	}
	prev, err := sinks.ReadRun(ctx, b, prefix, m.RunID)
	if err != nil {
		return nil, err
	}
	if prev.Final() {
		h.st = prev
		return h, nil
	}
	if prev.Lease.After(now) && prev.Owner != r.owner {
		return nil, fmt.Errorf("run %s %s by %s until %s: %w", m.RunID, prev.State, prev.Owner, prev.Lease.Format(time.RFC3339), errBusy)
	}
	next := prev
	next.RunID = m.RunID // the key the entry was read from, whatever it holds
	next.Attempt++
	next.Owner, next.Lease, next.Updated = r.owner, now.Add(r.lease), now
	if prev.State == sinks.RunFailed { // failed in a way a retry may mend: go on from where it stopped
		next.State, next.Resume, next.Reason = prev.Resume, "", ""
	}
	for {
		err := sinks.TakeOverRun(ctx, b, prefix, next)
		if err == nil {
			break
		}
		if !errors.Is(err, sinks.ErrRunClaimed) {
			return nil, err
		}
		// Another worker took this attempt. If it did so a lease ago and never recorded it, it died in between:
		// the run is nobody's, and the next attempt is free to take.
		created, aerr := sinks.RunAttemptCreated(ctx, b, prefix, m.RunID, next.Attempt)
		if aerr != nil || now.Sub(created) < r.lease {
			return nil, fmt.Errorf("run %s: %w", m.RunID, errBusy)
		}
		next.Attempt++
	}
	h.st = next
	return h, nil
}

// errPermanent marks a failure that no redelivery can mend.
var errPermanent = errors.New("permanent failure")

func permanent(err error) bool {
	if errors.Is(err, errPermanent) || errors.Is(err, trigger.ErrFailed) || errors.Is(err, trigger.ErrDeadline) ||
		errors.Is(err, pipeline.ErrForeignOutput) {
		return true
	}
	// The service refused the request itself (a Group that does not exist, a store without a bulk destination).
	var ge *googleapi.Error
	return errors.As(err, &ge) && ge.Code >= 400 && ge.Code < 500 &&
		ge.Code != http.StatusRequestTimeout && ge.Code != http.StatusTooManyRequests && ge.Code != http.StatusConflict
}

// phases takes the run from its recorded state to published.
func (r *runner) phases(ctx context.Context, log *slog.Logger, h *hold, m trigger.Message) (*sinks.Manifest, error) {
	phase := map[string]float64{}
	timed := func(name string, start time.Time) { phase[name] += r.now().Sub(start).Seconds() }
	handle, out, err := r.export(ctx, log, h, m, timed)
	if err != nil {
		return nil, err
	}
	tt := out.TransactionTime.UTC().Format(time.RFC3339Nano)

	start := r.now()
	// The run's own fields go into the manifest in the one write that publishes the conversion.
	annotate := func(mf *sinks.Manifest) {
		timed("convert", start)
		mf.Export, _ = json.Marshal(handle)
		mf.TransactionTime = tt
		mf.Message = m.Encode()
		mf.PhaseSeconds = phase
		if keys := exportErrors(out); len(keys) > 0 {
			mf.Extra = map[string]json.RawMessage{}
			mf.Extra["export_errors"], _ = json.Marshal(keys)
		}
	}
	mf, err := r.convertExport(ctx, log, h, handle, out, annotate)
	if err != nil {
		return nil, err
	}
	if err := r.published(ctx, log, h, m, out.TransactionTime); err != nil {
		return nil, err
	}
	return mf, nil
}

// published records the run as published in the ledger and as the store's last run.
func (r *runner) published(ctx context.Context, log *slog.Logger, h *hold, m trigger.Message, tt time.Time) error {
	// The store's last run is recorded before the ledger says published, so that a crash in between leaves a run
	// that a redelivery publishes again, and records again, rather than a published run nobody recorded.
	if err := r.recordLast(ctx, h, m, tt); err != nil {
		log.Warn("record last run (since \"last\" of the next run may export more than needed)", "err", err)
	}
	return h.save(ctx, func(s *sinks.RunState) {
		s.State, s.Manifest, s.Lease = sinks.RunPublished, m.RunID+"/_manifest.json", time.Time{}
	})
}

// exportErrors are the gs:// URLs of the export's error files.
func exportErrors(out *trigger.Output) []string {
	keys := make([]string, len(out.Errors))
	for i, e := range out.Errors {
		keys[i] = "gs://" + out.Bucket + "/" + e.Key
	}
	return keys
}

// export takes the run from its recorded state to a finished export (recording each step in the ledger) and
// returns the export's handle and what it wrote.
func (r *runner) export(ctx context.Context, log *slog.Logger, h *hold, m trigger.Message,
	timed func(string, time.Time)) (trigger.Handle, *trigger.Output, error) {
	topts := r.trigger
	topts.OnProgress = func(p trigger.Progress) {
		log.Info("export progress", "phase", "export", "polls", p.Polls, "done", p.Done, "progress", p.Message,
			"exported", p.Success, "failed", p.Failure, "pending", p.Pending)
	}
	if topts.OpenBucket == nil {
		topts.OpenBucket = r.openExportBucket
	}
	exports := trigger.New(r.svc, topts)

	if st := h.snapshot(); st.State == sinks.RunClaimed {
		start := r.now()
		since, err := r.since(ctx, h, m)
		if err != nil {
			return trigger.Handle{}, nil, err
		}
		dest := ""
		if m.Kind == trigger.KindStore {
			dest = fmt.Sprintf("%s/%s/attempt-%d/", m.ExportPrefix, m.RunID, st.Attempt)
		}
		if st.ExportRequests > 0 {
			// An earlier holder asked for the export and died before recording its handle. Nothing finds that
			// export again (the API takes no request id and lists no request), so another is started.
			log.Warn("an earlier attempt may have started an export whose handle was never recorded; starting another",
				"phase", "export", "export_requests", st.ExportRequests)
		}
		if err := h.save(ctx, func(s *sinks.RunState) { s.ExportRequests++ }); err != nil {
			return trigger.Handle{}, nil, err
		}
		log.Info("export starting", "phase", "export", "kind", m.Kind, "since", formatSince(since))
		// From the request to the ledger write of its handle, a shutdown must not cut in: an export the service
		// started and nobody recorded would be started again by the redelivery.
		sctx, cancel := detach(ctx, startGrace)
		defer cancel()
		handle, err := exports.Start(sctx, m.Request(since, dest))
		if err != nil {
			return trigger.Handle{}, nil, err
		}
		enc, err := json.Marshal(handle)
		if err != nil {
			return trigger.Handle{}, nil, fmt.Errorf("encode export handle: %w", err)
		}
		if err := h.save(sctx, func(s *sinks.RunState) {
			s.State, s.Export, s.Since = sinks.RunExporting, enc, formatSince(since)
		}); err != nil {
			return trigger.Handle{}, nil, err
		}
		cancel()
		timed("export", start)
		log.Info("export started", "phase", "export", "operation", handle.Operation)
		if err := ctx.Err(); err != nil {
			return trigger.Handle{}, nil, fmt.Errorf("run %s stopped after starting its export: %w", m.RunID, err)
		}
	}

	handle, err := trigger.ParseHandle(h.snapshot().Export)
	if err != nil {
		return trigger.Handle{}, nil, fmt.Errorf("run %s: recorded export handle: %w: %w", m.RunID, errPermanent, err)
	}
	// Exporting: wait (again, after a restart) on the recorded export. Converting: the export is done, and one poll
	// lists its output again.
	start := r.now()
	out, err := exports.Wait(ctx, handle)
	if err != nil {
		return trigger.Handle{}, nil, err
	}
	timed("export", start)
	tt := out.TransactionTime.UTC().Format(time.RFC3339Nano)
	if h.state() == sinks.RunExporting {
		if err := h.save(ctx, func(s *sinks.RunState) { s.State, s.TransactionTime = sinks.RunConverting, tt }); err != nil {
			return trigger.Handle{}, nil, err
		}
		log.Info("export finished", "phase", "export", "objects", len(out.Objects), "error_files", len(out.Errors),
			"transaction_time", tt)
	}

	return handle, out, nil
}

// startGrace is how long starting an export and recording its handle may go on once the run is cancelled.
const startGrace = 5 * time.Second

// detach returns a context that is not cancelled with ctx but grace after it, for a step that must not be cut in
// half. Call cancel when the step is done.
func detach(ctx context.Context, grace time.Duration) (_ context.Context, cancel context.CancelFunc) {
	dctx, cancelD := context.WithCancel(context.WithoutCancel(ctx))
	var t *time.Timer
	var mu sync.Mutex
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		t = time.AfterFunc(grace, cancelD)
	})
	return dctx, func() {
		stop()
		mu.Lock()
		defer mu.Unlock()
		if t != nil {
			t.Stop()
		}
		cancelD()
	}
}

// exportLayout is the reader's name for the layout an export reports; unknown is left to the contents.
func exportLayout(l trigger.Layout) reader.Layout {
	switch l {
	case trigger.LayoutPatient:
		return reader.LayoutPatient
	case trigger.LayoutType:
		return reader.LayoutType
	}
	return reader.LayoutAuto
}

// runPrefix is OUT/<run_id>.
func runPrefix(prefix, runID string) string {
	if prefix = strings.TrimSuffix(prefix, "/"); prefix == "" {
		return runID
	}
	return prefix + "/" + runID
}

func formatSince(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// since is the _since of the export: the message's, or for "last" the store's last published transactionTime in
// this output (zero, exporting everything, when there is none).
func (r *runner) since(ctx context.Context, h *hold, m trigger.Message) (time.Time, error) {
	if t, ok := m.SinceTime(); ok {
		return t, nil
	}
	if m.Since != trigger.SinceLast {
		return time.Time{}, nil
	}
	last, err := sinks.ReadLastRun(ctx, h.b, h.prefix, m.Store)
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, last.TransactionTime)
	if err != nil {
		return time.Time{}, fmt.Errorf("last run %s of the store: transaction time: %w", last.RunID, err)
	}
	return t, nil
}

// recordLast keeps tt as the store's last transactionTime in this output, unless a later one is recorded.
func (r *runner) recordLast(ctx context.Context, h *hold, m trigger.Message, tt time.Time) error {
	prev, err := sinks.ReadLastRun(ctx, h.b, h.prefix, m.Store)
	if err == nil {
		if pt, perr := time.Parse(time.RFC3339Nano, prev.TransactionTime); perr == nil && !tt.After(pt) {
			return nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return sinks.WriteLastRun(ctx, h.b, h.prefix, sinks.LastRun{
		Store: m.Store, RunID: m.RunID, TransactionTime: tt.UTC().Format(time.RFC3339Nano), Published: r.now().UTC(),
	})
}

// convertExport converts the export's objects into OUT/<run_id>.
func (r *runner) convertExport(ctx context.Context, log *slog.Logger, h *hold, handle trigger.Handle, out *trigger.Output,
	annotate func(*sinks.Manifest)) (_ *sinks.Manifest, err error) {
	var src *blob.Bucket
	if out.Bucket == "" { // an export with no output (nothing changed since): an empty run is published
		src = memblob.OpenBucket(nil)
	} else if src, err = r.openExportBucket(ctx, out.Bucket); err != nil {
		return nil, fmt.Errorf("open export bucket %s: %w", out.Bucket, err)
	}
	defer src.Close()
	objs := make([]reader.Object, len(out.Objects))
	for i, o := range out.Objects {
		objs[i] = reader.Object{Key: o.Key, Size: o.Size, Layout: exportLayout(o.Layout)}
	}
	opts := r.convert
	runID := h.snapshot().RunID
	opts.RunID = runID
	opts.Annotate = annotate
	started := r.now()
	opts.Progress = func(p pipeline.Progress) {
		args := []any{"phase", "convert", "files_done", p.ObjectsDone, "files_total", p.ObjectsTotal,
			"lines", p.Lines, "rejected", p.Rejected}
		if secs := p.Elapsed.Seconds(); secs > 0 {
			args = append(args, "resources_per_s", int64(float64(p.Lines)/secs))
		}
		if p.BytesRead > 0 && p.BytesTotal > p.BytesRead {
			eta := time.Duration(float64(p.Elapsed) * float64(p.BytesTotal-p.BytesRead) / float64(p.BytesRead))
			args = append(args, "eta", eta.Round(time.Second).String())
		}
		log.Info("convert progress", append(args, dedupeArgs(p)...)...)
	}
	log.Info("convert starting", "phase", "convert", "files", len(objs))
	mf, err := pipeline.Run(ctx,
		pipeline.Source{Bucket: src, Name: "healthcare:" + handle.Operation, Objects: objs},
		pipeline.Sink{Bucket: h.b, Prefix: runPrefix(h.prefix, runID)},
		opts)
	if err != nil {
		return nil, fmt.Errorf("convert export %s: %w", handle.Operation, err)
	}
	log.Info("convert finished", "phase", "convert", "lines", mf.Totals.Lines, "rows", mf.Totals.Rows,
		"rejected", mf.Totals.Rejected, "seconds", r.now().Sub(started).Seconds())
	return mf, nil
}

// outputs opens output locations. mem:// buckets live as long as the process (each name is one bucket), so that a
// ledger in one outlives a run; gs:// buckets are opened on gcs (nil: gocloud's default client).
type outputs struct {
	gcs *gcsBuckets
	mu  sync.Mutex
	mem map[string]*blob.Bucket
}

// open returns the bucket and key prefix of loc and a function to call when done with it.
func (o *outputs) open(ctx context.Context, loc string) (*blob.Bucket, string, func(), error) {
	u, err := url.Parse(loc)
	if err != nil {
		return nil, "", nil, fmt.Errorf("open output %s: %w", loc, err)
	}
	switch u.Scheme {
	case "mem":
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.mem == nil {
			o.mem = map[string]*blob.Bucket{}
		}
		b := o.mem[u.Host]
		if b == nil {
			b = memblob.OpenBucket(nil)
			o.mem[u.Host] = b
		}
		return b, strings.Trim(u.Path, "/"), func() {}, nil
	case "gs":
		if o.gcs == nil {
			break
		}
		b, err := o.gcs.open(ctx, u.Host)
		if err != nil {
			return nil, "", nil, fmt.Errorf("open output %s: %w", loc, err)
		}
		return b, strings.Trim(u.Path, "/"), func() { b.Close() }, nil
	case "file":
		if err := os.MkdirAll(u.Path, 0o755); err != nil {
			return nil, "", nil, fmt.Errorf("create output directory: %w", err)
		}
		loc = u.Path
	}
	b, prefix, err := reader.OpenBucket(ctx, loc)
	if err != nil {
		return nil, "", nil, fmt.Errorf("open output %s: %w", loc, err)
	}
	return b, strings.TrimSuffix(prefix, "/"), func() { b.Close() }, nil
}

// Close closes the mem:// buckets and the Cloud Storage client.
func (o *outputs) Close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, b := range o.mem {
		b.Close()
	}
	o.mem = nil
	if o.gcs != nil {
		o.gcs.Close()
	}
}
