package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
)

// convertConfig is everything `fhirlake convert` needs. It comes from the environment (FHIRLAKE_*), then flags,
// and is validated before any work starts.
type convertConfig struct {
	In             string // "" means the sample embedded in the binary
	Out            string
	Workers        int
	MaxLineBytes   int
	RecursionDepth int
	DedupeKeys     int
	Layout         layoutFlag // "" is auto
	Validator      string     // "fast" (the default) or "reference": transform.Options.Validator
	Log            logConfig
	Task           taskConfig // a run spread over tasks (tasks.go)
}

// layoutFlag is --layout: per-type, per-patient or auto (kept as "", the zero value).
type layoutFlag reader.Layout

func (l *layoutFlag) String() string {
	if *l == "" {
		return string(reader.LayoutAuto)
	}
	return string(*l)
}

func (l *layoutFlag) Set(s string) error {
	v, err := reader.ParseLayout(s)
	if err != nil {
		return err
	}
	if v == reader.LayoutAuto {
		v = ""
	}
	*l = layoutFlag(v)
	return nil
}

type logConfig struct {
	Format string // "json", "text" or "auto" (json unless stderr is a terminal)
	Level  string // debug, info, warn, error
}

// envDefaults maps each flag to the environment variable that sets its default.
var envDefaults = map[string]string{
	"in":              "FHIRLAKE_IN",
	"out":             "FHIRLAKE_OUT",
	"workers":         "FHIRLAKE_WORKERS",
	"max-line-bytes":  "FHIRLAKE_MAX_LINE_BYTES",
	"recursion-depth": "FHIRLAKE_RECURSION_DEPTH",
	"dedupe-keys":     "FHIRLAKE_DEDUPE_KEYS",
	"layout":          "FHIRLAKE_LAYOUT",
	"validator":       "FHIRLAKE_VALIDATOR",
	"log-format":      "FHIRLAKE_LOG_FORMAT",
	"log-level":       "FHIRLAKE_LOG_LEVEL",
	"tasks":           "CLOUD_RUN_TASK_COUNT",
	"task-index":      "CLOUD_RUN_TASK_INDEX",
	"split-bytes":     "FHIRLAKE_SPLIT_BYTES",
	"run-id":          "CLOUD_RUN_EXECUTION",
}

func parseConvertConfig(args []string, getenv func(string) string, stderr io.Writer) (convertConfig, error) {
	var c convertConfig
	fs := flag.NewFlagSet("convert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.In, "in", "", "source: a directory, file:///dir, gs://bucket/prefix or mem://; empty: the embedded sample")
	fs.StringVar(&c.Out, "out", "./fhirlake-out", "destination: a directory, file:///dir, gs://bucket/prefix or mem://")
	fs.IntVar(&c.Workers, "workers", 0, "decoding goroutines (0: one per CPU)")
	fs.IntVar(&c.MaxLineBytes, "max-line-bytes", 64<<20, "longest NDJSON line kept; longer lines are quarantined")
	fs.IntVar(&c.RecursionDepth, "recursion-depth", 2, "how often a type may nest inside itself before the rest is kept as JSON")
	addDedupeFlag(fs, &c.DedupeKeys)
	addValidatorFlag(fs, &c.Validator)
	fs.Var(&c.Layout, "layout", "how objects are arranged: per-type, per-patient (Patient blocks) or auto (decided per object from its first lines)")
	addLogFlags(fs, &c.Log)
	addTaskFlags(fs, &c.Task)
	fs.StringVar(&c.Task.RunID, "run-id", "", "with --tasks: the run's name, the same in every task (CLOUD_RUN_EXECUTION; empty: derived from the plan)")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	return c, c.validate()
}

// addDedupeFlag adds --dedupe-keys (pipeline.Options.DedupeKeys).
func addDedupeFlag(fs *flag.FlagSet, n *int) {
	fs.IntVar(n, "dedupe-keys", pipeline.DefaultDedupeKeys, "per-Patient resource keys held in memory to write each resource once "+
		"(about 34 bytes each); past them, keys go to the output bucket and the copies are dropped at the end; -1: no bound")
}

func addLogFlags(fs *flag.FlagSet, c *logConfig) {
	fs.StringVar(&c.Format, "log-format", "auto", "log format: json, text or auto (json unless stderr is a terminal)")
	fs.StringVar(&c.Level, "log-level", "info", "log level: debug, info, warn or error")
}

// parseFlags sets each flag from its environment variable (envDefaults, then runEnv), then parses args, so that
// flags override the environment. Every command parses this way.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name, ok := envDefaults[f.Name]
		if !ok {
			name, ok = runEnv[f.Name]
		}
		if !ok {
			return
		}
		if v := getenv(name); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return nil
}

// conversionErrors checks the conversion flags that convert, run, worker and serve share.
func conversionErrors(workers, maxLineBytes, recursionDepth, dedupeKeys int) []error {
	var errs []error
	if workers < 0 {
		errs = append(errs, fmt.Errorf("--workers must be 0 or more, not %d", workers))
	}
	if maxLineBytes < 1024 {
		errs = append(errs, fmt.Errorf("--max-line-bytes must be at least 1024, not %d", maxLineBytes))
	}
	if recursionDepth < 1 {
		errs = append(errs, fmt.Errorf("--recursion-depth must be at least 1, not %d", recursionDepth))
	}
	if dedupeKeys < 1 && dedupeKeys != -1 {
		errs = append(errs, fmt.Errorf("--dedupe-keys must be at least 1, or -1 for no bound, not %d", dedupeKeys))
	}
	return errs
}

func (c convertConfig) validate() error {
	var errs []error
	if c.Out == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	errs = append(errs, conversionErrors(c.Workers, c.MaxLineBytes, c.RecursionDepth, c.DedupeKeys)...)
	errs = append(errs, validatorError(c.Validator)...)
	errs = append(errs, c.Task.errors()...)
	return errors.Join(append(errs, c.Log.validate())...)
}

func (c logConfig) validate() error {
	var errs []error
	switch c.Format {
	case "json", "text", "auto":
	default:
		errs = append(errs, fmt.Errorf("--log-format must be json, text or auto, not %q", c.Format))
	}
	if _, err := parseLevel(c.Level); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// addValidatorFlag defines --validator (FHIRLAKE_VALIDATOR), shared by convert and the message-driven commands.
func addValidatorFlag(fs *flag.FlagSet, v *string) {
	fs.StringVar(v, "validator", "fast", "validation path: fast (one pass over the bytes against the R4 definitions; "+
		"every line it cannot vouch for goes to the reference, nearly every invalid one among them) or reference "+
		"(google/fhir/go jsonformat for every line); both give the same verdicts and issues")
}

func validatorError(v string) []error {
	if v != "" && v != "reference" && v != "fast" { // "": pipeline.Options' zero value, the reference
		return []error{fmt.Errorf("--validator must be fast or reference, not %q", v)}
	}
	return nil
}
