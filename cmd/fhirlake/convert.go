package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/sinks"
)

// sample is one Synthea patient with everything that references it, one file per resource type.
// `fhirlake convert` reads it when no --in is given, so that the command works on a fresh machine.
//
//go:embed sample/*.ndjson
var sample embed.FS

const sampleName = "embedded:sample"

func convertCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parseConvertConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake convert: %v\n", err)
		return 2
	}
	log := newLogger(c.Log, stderr)
	gcs := &gcsBuckets{opts: defaultGCS}
	defer gcs.Close()
	if err := convert(ctx, c, gcs.open, log, stdout); err != nil {
		log.Error("convert failed", "err", err)
		return 1
	}
	return 0
}

// convert converts c.In into c.Out; openGCS opens the gs:// buckets they name.
func convert(ctx context.Context, c convertConfig, openGCS openGCSFunc, log *slog.Logger, stdout io.Writer) error {
	src, err := openSource(ctx, openGCS, c.In)
	if err != nil {
		return err
	}
	defer src.Bucket.Close()
	dst, err := openSink(ctx, openGCS, c.Out)
	if err != nil {
		return err
	}
	defer dst.Bucket.Close()

	log.Info("convert started", "source", src.Name, "out", c.Out, "workers", workers(c.Workers),
		"layout", c.Layout.String(), "validator", c.Validator)
	if c.Task.spread() {
		return convertSpread(ctx, c, log, stdout, src, dst)
	}
	start := time.Now()
	m, err := pipeline.Run(ctx, src, dst, conversionOptions(c, log))
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	for _, is := range m.BlockIssues {
		log.Warn("malformed Patient block", "object", is.Object, "line", is.Line, "reason", is.Reason)
	}
	for _, in := range m.Inputs {
		if in.Error != "" {
			log.Warn("object not read to its end", "object", in.Object, "lines_kept", in.Lines, "reason", in.Error)
		}
	}
	log.Info("convert finished", "lines", m.Totals.Lines, "valid", m.Totals.Valid,
		"rejected", m.Totals.Rejected, "rows", m.Totals.Rows, "valid_by_reference", m.Totals.ValidByReference,
		"elapsed", elapsed.Round(time.Millisecond).String())
	return printSummary(stdout, m, elapsed)
}

// conversionOptions are the pipeline options of c, with progress logged.
func conversionOptions(c convertConfig, log *slog.Logger) pipeline.Options {
	return pipeline.Options{
		Workers:        c.Workers,
		MaxLineBytes:   c.MaxLineBytes,
		RecursionDepth: c.RecursionDepth,
		DedupeKeys:     c.DedupeKeys,
		Layout:         reader.Layout(c.Layout),
		Validator:      c.Validator,
		HeapTarget:     heapTarget,
		Progress: func(p pipeline.Progress) {
			args := []any{"objects_done", p.ObjectsDone, "objects_total", p.ObjectsTotal,
				"lines", p.Lines, "rejected", p.Rejected,
				"mb_read", mb(p.BytesRead), "mb_total", mb(p.BytesTotal),
				"elapsed", p.Elapsed.Round(time.Millisecond).String()}
			log.Info("progress", append(args, dedupeArgs(p)...)...)
		},
	}
}

// dedupeArgs are the log attributes of the keys a run holds for per-Patient objects (none without them): memory
// that grows with the input up to --dedupe-keys, for whoever sizes the job.
func dedupeArgs(p pipeline.Progress) []any {
	if p.DedupeKeys == 0 {
		return nil
	}
	args := []any{"dedupe_keys", p.DedupeKeys, "dedupe_mb", mb(p.DedupeBytes)}
	if p.DedupeSpilled > 0 {
		args = append(args, "dedupe_spilled", p.DedupeSpilled)
	}
	return args
}

// openSource opens the input location; "" is the embedded sample.
func openSource(ctx context.Context, openGCS openGCSFunc, loc string) (pipeline.Source, error) {
	if loc == "" {
		b, err := sampleBucket(ctx)
		if err != nil {
			return pipeline.Source{}, err
		}
		return pipeline.Source{Bucket: b, Name: sampleName}, nil
	}
	b, prefix, err := openLocation(ctx, openGCS, loc)
	if err != nil {
		return pipeline.Source{}, fmt.Errorf("open input %s: %w", loc, err)
	}
	return pipeline.Source{Bucket: b, Prefix: prefix, Name: sourceName(loc)}, nil
}

// sourceName is how the manifest names a source: absolute for local paths, so that runs from different working
// directories agree.
func sourceName(loc string) string {
	if strings.Contains(loc, "://") {
		return loc
	}
	if abs, err := filepath.Abs(loc); err == nil {
		return abs
	}
	return loc
}

// openSink opens the output location, creating it when it is a local directory.
func openSink(ctx context.Context, openGCS openGCSFunc, loc string) (pipeline.Sink, error) {
	if !strings.Contains(loc, "://") {
		if err := os.MkdirAll(loc, 0o755); err != nil {
			return pipeline.Sink{}, fmt.Errorf("create output directory: %w", err)
		}
	}
	b, prefix, err := openLocation(ctx, openGCS, loc)
	if err != nil {
		return pipeline.Sink{}, fmt.Errorf("open output %s: %w", loc, err)
	}
	return pipeline.Sink{Bucket: b, Prefix: prefix}, nil
}

// openGCSFunc opens the Cloud Storage bucket of that name: gcsBuckets.open, the storage client and retry settings
// of the worker (gcsOptions), in production.
type openGCSFunc func(ctx context.Context, name string) (*blob.Bucket, error)

// openLocation opens loc and returns its bucket and key prefix as reader.OpenBucket does, except that a gs://
// bucket is opened by openGCS rather than by gocloud's default client, which retries less (no retry of an upload)
// and has no stall guard. A gs:// location takes no query parameters: gocloud's (credentials, anonymous access)
// do not apply to that client.
func openLocation(ctx context.Context, openGCS openGCSFunc, loc string) (*blob.Bucket, string, error) {
	u, err := url.Parse(loc)
	if err != nil || !strings.Contains(loc, "://") || !strings.EqualFold(u.Scheme, "gs") {
		return reader.OpenBucket(ctx, loc)
	}
	if u.Host == "" {
		return nil, "", errors.New("no bucket name")
	}
	if u.RawQuery != "" {
		return nil, "", errors.New("a gs:// location takes no query parameters")
	}
	b, err := openGCS(ctx, u.Host)
	if err != nil {
		return nil, "", err
	}
	prefix := strings.TrimPrefix(u.Path, "/")
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return b, prefix, nil
}

func sampleBucket(ctx context.Context) (*blob.Bucket, error) {
	b := memblob.OpenBucket(nil)
	err := eachSampleFile(func(name string, data []byte) error { return b.WriteAll(ctx, name, data, nil) })
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("load embedded sample: %w", err)
	}
	return b, nil
}

// eachSampleFile calls fn with the name and contents of every file of the embedded sample.
func eachSampleFile(fn func(name string, data []byte) error) error {
	return fs.WalkDir(sample, "sample", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := sample.ReadFile(path)
		if err != nil {
			return err
		}
		return fn(d.Name(), data)
	})
}

func printSummary(w io.Writer, m *sinks.Manifest, elapsed time.Duration) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "resource type\trows\trejected\tfiles\t")
	var files int
	for _, t := range slices.Sorted(maps.Keys(m.Resources)) {
		r := m.Resources[t]
		files += len(r.Files)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", t, r.Rows, r.Rejected, len(r.Files))
	}
	if m.Totals.Unparsed > 0 {
		fmt.Fprintf(tw, "(unparsed)\t\t%d\t\t\n", m.Totals.Unparsed)
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t\n", m.Totals.Rows, m.Totals.Rejected, files)
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := m.Totals.ValidByReference; n > 0 && m.Validator == "fast" {
		fmt.Fprintf(w, "%d of %d valid lines are in a shape the fast validator does not model (null values, escaped keys ...): "+
			"the reference validated them, at its speed; valid_by_reference in the manifest counts them per type\n", n, m.Totals.Valid)
	}
	if n := m.Totals.RejectedInputs; n > 0 {
		fmt.Fprintf(w, "%d objects damaged, not read to their end: the lines before the damage are converted, see the manifest's inputs\n", n)
	}
	var blocks int64
	for _, i := range m.Inputs {
		blocks += i.Blocks
	}
	if blocks > 0 || m.Totals.BlockIssues > 0 {
		fmt.Fprintf(w, "per-Patient: %d blocks, %d duplicates written once, %d links, %d block issues\n",
			blocks, m.Totals.Duplicates, m.Totals.Links, m.Totals.BlockIssues)
	}
	var in int64
	for _, i := range m.Inputs {
		in += i.Bytes
	}
	secs := elapsed.Seconds()
	_, err := fmt.Fprintf(w, "%d lines from %d objects (%.1f MB) in %.1fs: %.1f MB/s, %.0f resources/s\n",
		m.Totals.Lines, len(m.Inputs), mb(in), secs, mb(in)/secs, float64(m.Totals.Lines)/secs)
	return err
}

func workers(n int) int {
	if n > 0 {
		return n
	}
	return runtime.GOMAXPROCS(0)
}

func mb(n int64) float64 { return float64(n) / 1e6 }
