package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
)

// A run spread over the tasks of a Cloud Run job: every task runs the same command with CLOUD_RUN_TASK_INDEX and
// CLOUD_RUN_TASK_COUNT set (or --task-index and --tasks), converts the splits the run's plan gives it, and the task
// that finds every task's record publishes the manifest (pipeline.RunTask). One task is the ordinary run.

// taskConfig is the spread of a run over tasks, shared by convert and run.
type taskConfig struct {
	Tasks      int   // 0 or 1: one process, the ordinary run
	TaskIndex  int   // this task, 0 <= TaskIndex < Tasks
	SplitBytes int64 // 0: pipeline.DefaultSplitBytes
	// RunID names a spread convert run (its plan and task records); "" is CLOUD_RUN_EXECUTION, or else derived
	// from the plan. run takes the message's run id.
	RunID string
}

func addTaskFlags(fs *flag.FlagSet, c *taskConfig) {
	fs.IntVar(&c.Tasks, "tasks", 0, "spread the run over this many tasks (Cloud Run job tasks; CLOUD_RUN_TASK_COUNT); 0 or 1: one process")
	fs.IntVar(&c.TaskIndex, "task-index", 0, "this task, from 0 to --tasks - 1 (CLOUD_RUN_TASK_INDEX)")
	fs.Int64Var(&c.SplitBytes, "split-bytes", 0, "largest byte range of an object one task reads (0: 256 MiB)")
}

// spread reports whether the run is spread over several tasks.
func (c taskConfig) spread() bool { return c.Tasks > 1 }

func (c taskConfig) errors() []error {
	var errs []error
	if c.Tasks < 0 {
		errs = append(errs, fmt.Errorf("--tasks must be 0 or more, not %d", c.Tasks))
	}
	if c.TaskIndex < 0 || c.TaskIndex >= max(c.Tasks, 1) {
		errs = append(errs, fmt.Errorf("--task-index must be from 0 to %d, not %d", max(c.Tasks, 1)-1, c.TaskIndex))
	}
	if c.SplitBytes < 0 {
		errs = append(errs, fmt.Errorf("--split-bytes must be 0 or more, not %d", c.SplitBytes))
	}
	return errs
}

// convertSpread is convert's share of a run spread over tasks. The plan is made by every task from the same
// listing and stored once (the first stored wins), so that all follow one plan.
func convertSpread(ctx context.Context, c convertConfig, log *slog.Logger, stdout io.Writer, src pipeline.Source, dst pipeline.Sink) error {
	start := time.Now()
	plan, err := pipeline.NewPlan(ctx, src, pipeline.PlanOptions{
		Tasks: c.Task.Tasks, SplitBytes: c.Task.SplitBytes, Layout: reader.Layout(c.Layout), MaxLineBytes: c.MaxLineBytes,
	})
	if err != nil {
		return err
	}
	plan.RunID = c.Task.RunID
	if plan.RunID == "" {
		plan.RunID = "convert-" + plan.Hash()[:16]
	}
	if plan, err = storePlan(ctx, dst, plan); err != nil {
		return err
	}
	if plan.Tasks != c.Task.Tasks {
		return fmt.Errorf("run %s is planned for %d tasks, not %d", plan.RunID, plan.Tasks, c.Task.Tasks)
	}
	log.Info("task started", "run_id", plan.RunID, "task", c.Task.TaskIndex, "tasks", plan.Tasks,
		"splits", len(plan.TaskSplits(c.Task.TaskIndex)), "mb", mb(plan.TaskBytes()[c.Task.TaskIndex]))
	res, err := pipeline.RunTask(ctx, src, dst, plan, c.Task.TaskIndex, conversionOptions(c, log))
	if err != nil {
		return err
	}
	return reportTask(log, stdout, plan, c.Task.TaskIndex, res, time.Since(start))
}

// storePlan stores plan in the output's ledger unless a plan of its run is there, and returns the stored one.
func storePlan(ctx context.Context, dst pipeline.Sink, plan *pipeline.Plan) (*pipeline.Plan, error) {
	data, err := plan.Encode()
	if err != nil {
		return nil, fmt.Errorf("encode plan: %w", err)
	}
	stored, err := sinks.CreatePlan(ctx, dst.Bucket, dst.Prefix, plan.RunID, data)
	if err != nil {
		return nil, err
	}
	return pipeline.DecodePlan(stored)
}

// reportTask logs how a task ended and prints the run's summary when it published it.
func reportTask(log *slog.Logger, stdout io.Writer, plan *pipeline.Plan, task int, res *pipeline.TaskResult, elapsed time.Duration) error {
	if res.Record != nil {
		t := res.Record.Manifest.Totals
		log.Info("task finished", "run_id", plan.RunID, "task", task, "resumed", res.Resumed, "lines", t.Lines,
			"valid", t.Valid, "rejected", t.Rejected, "valid_by_reference", t.ValidByReference,
			"elapsed", elapsed.Round(time.Millisecond).String())
	}
	switch {
	case res.Manifest == nil:
		_, err := fmt.Fprintf(stdout, "task %d of %d of run %s done; the last task to finish publishes the run\n",
			task, plan.Tasks, plan.RunID)
		return err
	case res.Already:
		_, err := fmt.Fprintf(stdout, "run %s was published before; nothing to do\n", plan.RunID)
		return err
	}
	log.Info("run published", "run_id", plan.RunID, "task", task, "lines", res.Manifest.Totals.Lines,
		"rows", res.Manifest.Totals.Rows)
	return printSummary(stdout, res.Manifest, res.Manifest.Finished.Sub(res.Manifest.Started))
}

// runAnnotations is what the task that plans a message-driven run tells every task, through the plan, for the
// manifest.
type runAnnotations struct {
	Bucket          string          `json:"bucket"` // the export bucket
	Export          json.RawMessage `json:"export"`
	TransactionTime string          `json:"transaction_time"`
	ExportErrors    []string        `json:"export_errors,omitempty"`
	ExportSeconds   float64         `json:"export_seconds"`
}

// handleTask is one task's share of the run a delivery asks for (every task gets the same message). The task that
// wins the ledger claim (or takes over a run whose holder went away) starts or resumes the export, records the
// plan of the conversion beside the ledger entry, and releases its lease; the others wait for the plan. Then each
// converts its splits, and the last to finish publishes.
func (r *runner) handleTask(ctx context.Context, d delivery, tc taskConfig) outcome {
	m, err := trigger.ParseMessage(d.Data, r.policy)
	if err != nil {
		if tc.TaskIndex != 0 { // every task has the message: one dead-letters it
			return outcome{Verdict: ack, Poison: err.Error(), Err: err}
		}
		return r.poison(ctx, d, err)
	}
	log := r.log.With("run_id", m.RunID, "task", tc.TaskIndex, "tasks", tc.Tasks)
	log.Info("message received", "source", d.Source, "kind", m.Kind, "output", m.Output)
	b, prefix, closeOut, err := r.outputs.open(ctx, m.Output)
	if err != nil {
		return outcome{Verdict: nack, RunID: m.RunID, Err: err}
	}
	defer closeOut()

	plan, st, err := r.planOrWait(ctx, log, b, prefix, m, tc)
	if err != nil {
		o := outcome{Verdict: nack, RunID: m.RunID, State: st.State, Err: err}
		if permanent(err) {
			o.Verdict = ack
		}
		return o
	}
	if plan == nil { // final
		o := outcome{Verdict: ack, RunID: m.RunID, State: st.State, Already: st.State == sinks.RunPublished}
		if st.State == sinks.RunFailed {
			o.Err = fmt.Errorf("run %s failed: %s", m.RunID, st.Reason)
		}
		return o
	}
	if plan.Tasks != tc.Tasks {
		return outcome{Verdict: ack, RunID: m.RunID, Err: fmt.Errorf("run %s is planned for %d tasks, not %d: %w",
			m.RunID, plan.Tasks, tc.Tasks, errPermanent)}
	}
	var ann runAnnotations
	if err := json.Unmarshal(plan.Annotations, &ann); err != nil {
		return outcome{Verdict: ack, RunID: m.RunID, Err: fmt.Errorf("run %s: plan annotations: %w: %w", m.RunID, errPermanent, err)}
	}
	var src *blob.Bucket
	if ann.Bucket == "" {
		src = memblob.OpenBucket(nil)
	} else if src, err = r.openExportBucket(ctx, ann.Bucket); err != nil {
		return outcome{Verdict: nack, RunID: m.RunID, Err: fmt.Errorf("open export bucket %s: %w", ann.Bucket, err)}
	}
	defer src.Close()

	opts := r.convert
	opts.Annotate = func(mf *sinks.Manifest) {
		// Only what every merging task knows alike: the manifest is the same bytes whoever writes it.
		mf.Export = ann.Export
		mf.TransactionTime = ann.TransactionTime
		mf.Message = m.Encode()
		mf.PhaseSeconds = map[string]float64{"export": ann.ExportSeconds, "convert": mf.Finished.Sub(mf.Started).Seconds()}
		if len(ann.ExportErrors) > 0 {
			mf.Extra = map[string]json.RawMessage{}
			mf.Extra["export_errors"], _ = json.Marshal(ann.ExportErrors)
		}
	}
	log.Info("task converting", "phase", "convert", "splits", len(plan.TaskSplits(tc.TaskIndex)),
		"mb", mb(plan.TaskBytes()[tc.TaskIndex]))
	res, err := pipeline.RunTask(ctx, pipeline.Source{Bucket: src, Name: plan.Source}, pipeline.Sink{Bucket: b, Prefix: runPrefix(prefix, m.RunID)},
		plan, tc.TaskIndex, opts)
	if err != nil {
		o := outcome{Verdict: nack, RunID: m.RunID, State: sinks.RunConverting, Err: err}
		if permanent(err) {
			o.Verdict = ack
		}
		return o
	}
	o := outcome{Verdict: ack, RunID: m.RunID, State: sinks.RunConverting, Manifest: res.Manifest, Already: res.Already}
	if res.Manifest == nil {
		log.Info("task done; the last task to finish publishes", "lines", res.Record.Manifest.Totals.Lines)
		return o
	}
	h := &hold{r: r, b: b, prefix: prefix}
	if h.st, err = sinks.ReadRun(ctx, b, prefix, m.RunID); err != nil {
		return outcome{Verdict: nack, RunID: m.RunID, Err: err}
	}
	tt, _ := time.Parse(time.RFC3339Nano, ann.TransactionTime)
	if err := r.published(ctx, log, h, m, tt); err != nil {
		return outcome{Verdict: nack, RunID: m.RunID, Err: err}
	}
	o.State = sinks.RunPublished
	log.Info("run published", "rows", res.Manifest.Totals.Rows)
	return o
}

// planOrWait returns the run's plan: made by this task when it holds the run (it claims it, or takes it over from
// a holder whose lease ran out), or waited for while another task holds it. A nil plan means the run is final
// (published or failed), as st says.
func (r *runner) planOrWait(ctx context.Context, log *slog.Logger, b *blob.Bucket, prefix string, m trigger.Message,
	tc taskConfig) (*pipeline.Plan, sinks.RunState, error) {
	wait := r.trigger.Floor
	if wait <= 0 {
		wait = 2 * time.Second
	}
	for {
		data, err := sinks.ReadPlan(ctx, b, prefix, m.RunID)
		if err == nil {
			p, err := pipeline.DecodePlan(data)
			return p, sinks.RunState{State: sinks.RunConverting}, err
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, sinks.RunState{}, err
		}
		h, err := r.acquire(ctx, b, prefix, m)
		switch {
		case err == nil && h.st.Final():
			return nil, h.st, nil
		case err == nil:
			p, err := r.leadTask(ctx, log, h, m, tc)
			return p, h.st, err
		case !errors.Is(err, errBusy):
			return nil, sinks.RunState{}, err
		}
		log.Debug("waiting for the plan", "next_check", wait.String())
		select {
		case <-ctx.Done():
			return nil, sinks.RunState{}, fmt.Errorf("wait for the plan of run %s: %w", m.RunID, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, max(r.trigger.Cap, wait))
	}
}

// leadTask takes the run this task holds through its export, records the plan, and releases the hold.
func (r *runner) leadTask(ctx context.Context, log *slog.Logger, h *hold, m trigger.Message, tc taskConfig) (*pipeline.Plan, error) {
	log.Info("run held: planning it for every task", "state", h.st.State, "attempt", h.st.Attempt)
	stop := h.renew(ctx, r.lease/3)
	p, err := r.plan(ctx, log, h, m, tc)
	stop()
	if err != nil && permanent(err) {
		reason := err.Error()
		if serr := h.save(context.WithoutCancel(ctx), func(s *sinks.RunState) { s.State, s.Reason, s.Lease = sinks.RunFailed, reason, time.Time{} }); serr != nil {
			return nil, errors.Join(err, serr)
		}
		return nil, err
	}
	// Released either way: after the plan nobody needs to hold the run, and after a failure a retry takes over.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if serr := h.save(rctx, func(s *sinks.RunState) { s.Lease = time.Time{} }); serr != nil && err == nil {
		return nil, serr
	}
	return p, err
}

func (r *runner) plan(ctx context.Context, log *slog.Logger, h *hold, m trigger.Message, tc taskConfig) (*pipeline.Plan, error) {
	var exportSeconds float64
	handle, out, err := r.export(ctx, log, h, m, func(_ string, start time.Time) { exportSeconds += r.now().Sub(start).Seconds() })
	if err != nil {
		return nil, err
	}
	enc, _ := json.Marshal(handle)
	ann, err := json.Marshal(runAnnotations{
		Bucket: out.Bucket, Export: enc, TransactionTime: out.TransactionTime.UTC().Format(time.RFC3339Nano),
		ExportErrors: exportErrors(out), ExportSeconds: exportSeconds,
	})
	if err != nil {
		return nil, fmt.Errorf("encode plan annotations: %w", err)
	}
	var src *blob.Bucket
	if out.Bucket == "" {
		src = memblob.OpenBucket(nil)
	} else if src, err = r.openExportBucket(ctx, out.Bucket); err != nil {
		return nil, fmt.Errorf("open export bucket %s: %w", out.Bucket, err)
	}
	defer src.Close()
	objs := make([]reader.Object, len(out.Objects))
	for i, o := range out.Objects {
		objs[i] = reader.Object{Key: o.Key, Size: o.Size, Layout: exportLayout(o.Layout)}
	}
	plan, err := pipeline.NewPlan(ctx, pipeline.Source{Bucket: src, Name: "healthcare:" + handle.Operation, Objects: objs},
		pipeline.PlanOptions{RunID: m.RunID, Tasks: tc.Tasks, SplitBytes: tc.SplitBytes, Layout: r.convert.Layout,
			MaxLineBytes: r.convert.MaxLineBytes})
	if err != nil {
		return nil, err
	}
	plan.Annotations = ann
	plan, err = storePlan(ctx, pipeline.Sink{Bucket: h.b, Prefix: h.prefix}, plan)
	if err != nil {
		return nil, err
	}
	log.Info("plan recorded", "objects", len(plan.Objects), "splits", len(plan.Splits))
	return plan, nil
}

// taskOwner names a task in the ledger: the Cloud Run execution (or the host) and the task index, with nothing
// random, so that a retry of the task (Cloud Run restarts the same index) takes its own run over at once.
func taskOwner(getenv func(string) string, task int) string {
	host := getenv("CLOUD_RUN_EXECUTION")
	if host == "" {
		host, _ = os.Hostname()
	}
	return fmt.Sprintf("%s/task-%d", host, task)
}
