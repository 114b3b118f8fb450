package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"cloud.google.com/go/pubsub/v2"
	healthcare "google.golang.org/api/healthcare/v1"
	"google.golang.org/api/option"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/trigger"
)

// runConfig is what the message-driven commands (run, worker, serve) share. It comes from the environment, then
// flags, like convertConfig, and is validated before any work starts.
type runConfig struct {
	AllowStores  string // comma-separated FHIR store names, or "*"
	AllowOutputs string // comma-separated output locations (gs://bucket[/prefix], file:///dir, mem://), or "*"
	// AllowExportPrefixes are where store exports may write (gs://bucket[/prefix], comma-separated, or "*"); empty
	// refuses every store export.
	AllowExportPrefixes string

	Project            string // Google Cloud project of the Pub/Sub resources
	DeadLetterTopic    string // topic (id or projects/p/topics/t) that poison messages are published to; "" logs only
	HealthcareEndpoint string // "" is the real service

	Lease          time.Duration // how long a run's hold lasts without renewal
	ExportDeadline time.Duration
	PollFloor      time.Duration
	PollCap        time.Duration

	Workers        int
	MaxLineBytes   int
	RecursionDepth int
	DedupeKeys     int
	Validator      string
	Log            logConfig
}

// runEnv maps the flags of runConfig (and of the commands using it) to their environment variables; the flags
// shared with convert (workers, log-format ...) are in envDefaults.
var runEnv = map[string]string{
	"allow-stores":             "FHIRLAKE_ALLOW_STORES",
	"allow-outputs":            "FHIRLAKE_ALLOW_OUTPUTS",
	"allow-export-prefixes":    "FHIRLAKE_ALLOW_EXPORT_PREFIXES",
	"project":                  "GOOGLE_CLOUD_PROJECT",
	"dead-letter-topic":        "FHIRLAKE_DEAD_LETTER_TOPIC",
	"healthcare-endpoint":      "FHIRLAKE_HEALTHCARE_ENDPOINT",
	"lease":                    "FHIRLAKE_LEASE",
	"export-deadline":          "FHIRLAKE_EXPORT_DEADLINE",
	"poll-floor":               "FHIRLAKE_POLL_FLOOR",
	"poll-cap":                 "FHIRLAKE_POLL_CAP",
	"message":                  "FHIRLAKE_MESSAGE",
	"subscription":             "FHIRLAKE_SUBSCRIPTION",
	"max-outstanding-messages": "FHIRLAKE_MAX_OUTSTANDING_MESSAGES",
	"max-outstanding-bytes":    "FHIRLAKE_MAX_OUTSTANDING_BYTES",
	"max-extension":            "FHIRLAKE_MAX_EXTENSION",
	"exit-when-idle":           "FHIRLAKE_EXIT_WHEN_IDLE",
	"addr":                     "FHIRLAKE_ADDR",
	"audience":                 "FHIRLAKE_PUSH_AUDIENCE",
	"push-service-account":     "FHIRLAKE_PUSH_SERVICE_ACCOUNT",
}

func addRunFlags(fs *flag.FlagSet, c *runConfig) {
	fs.StringVar(&c.AllowStores, "allow-stores", "", "FHIR stores messages may name, comma-separated (projects/.../fhirStores/...), or *")
	fs.StringVar(&c.AllowOutputs, "allow-outputs", "", "outputs messages may name, comma-separated: gs://bucket[/prefix], file:///dir, mem://, or *")
	fs.StringVar(&c.AllowExportPrefixes, "allow-export-prefixes", "", "where store exports may write, comma-separated: gs://bucket[/prefix], or * (empty: no store exports)")
	fs.StringVar(&c.Project, "project", "", "Google Cloud project of the Pub/Sub topics and subscriptions")
	fs.StringVar(&c.DeadLetterTopic, "dead-letter-topic", "", "Pub/Sub topic poison messages are published to (empty: logged only)")
	fs.StringVar(&c.HealthcareEndpoint, "healthcare-endpoint", "", "Cloud Healthcare API endpoint (empty: the real service; an http:// endpoint, a local fake, is called without credentials)")
	fs.DurationVar(&c.Lease, "lease", 2*time.Minute, "how long a run's hold lasts unless renewed; a redelivery takes over a run whose hold ran out")
	fs.DurationVar(&c.ExportDeadline, "export-deadline", 24*time.Hour, "how long an export may run before it is cancelled")
	fs.DurationVar(&c.PollFloor, "poll-floor", 2*time.Second, "first delay between export status polls")
	fs.DurationVar(&c.PollCap, "poll-cap", time.Minute, "longest delay between export status polls")
	fs.IntVar(&c.Workers, "workers", 0, "decoding goroutines per run (0: one per CPU)")
	fs.IntVar(&c.MaxLineBytes, "max-line-bytes", 64<<20, "longest NDJSON line kept; longer lines are quarantined")
	fs.IntVar(&c.RecursionDepth, "recursion-depth", 2, "how often a type may nest inside itself before the rest is kept as JSON")
	addDedupeFlag(fs, &c.DedupeKeys)
	addValidatorFlag(fs, &c.Validator)
	addLogFlags(fs, &c.Log)
}

func (c runConfig) validate() error {
	var errs []error
	if c.AllowStores == "" {
		errs = append(errs, errors.New("--allow-stores is required (FHIRLAKE_ALLOW_STORES)"))
	}
	if c.AllowOutputs == "" {
		errs = append(errs, errors.New("--allow-outputs is required (FHIRLAKE_ALLOW_OUTPUTS)"))
	}
	if c.Lease < 3*time.Second {
		errs = append(errs, fmt.Errorf("--lease must be at least 3s, not %s", c.Lease))
	}
	if c.ExportDeadline <= 0 || c.PollFloor <= 0 || c.PollCap < c.PollFloor {
		errs = append(errs, errors.New("--export-deadline and --poll-floor must be positive, --poll-cap at least --poll-floor"))
	}
	errs = append(errs, conversionErrors(c.Workers, c.MaxLineBytes, c.RecursionDepth, c.DedupeKeys)...)
	errs = append(errs, validatorError(c.Validator)...)
	return errors.Join(append(errs, c.Log.validate())...)
}

func (c runConfig) policy() trigger.Policy {
	return trigger.Policy{Stores: splitList(c.AllowStores), Outputs: splitList(c.AllowOutputs),
		ExportPrefixes: splitList(c.AllowExportPrefixes)}
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// newRunner wires a runner for c with the real Healthcare API (or c.HealthcareEndpoint) and gs:// export buckets.
func newRunner(ctx context.Context, c runConfig, log *slog.Logger) (*runner, error) {
	var opts []option.ClientOption
	if c.HealthcareEndpoint != "" {
		opts = append(opts, option.WithEndpoint(c.HealthcareEndpoint))
	}
	if strings.HasPrefix(c.HealthcareEndpoint, "http://") {
		// A plain-HTTP endpoint is a local fake or emulator: no credentials are looked up, and no token travels in
		// clear.
		opts = append(opts, option.WithoutAuthentication())
	}
	svc, err := healthcare.NewService(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("healthcare client: %w", err)
	}
	return c.runner(svc, log), nil
}

// runner builds the runner of c on svc. Export and output buckets on Cloud Storage share one storage client with
// defaultGCS's retries.
func (c runConfig) runner(svc *healthcare.Service, log *slog.Logger) *runner {
	gcs := &gcsBuckets{opts: defaultGCS}
	return &runner{
		log:    log,
		policy: c.policy(),
		svc:    svc,
		trigger: trigger.Options{
			Floor: c.PollFloor, Cap: c.PollCap, Deadline: c.ExportDeadline,
		},
		convert: pipeline.Options{
			Workers: c.Workers, MaxLineBytes: c.MaxLineBytes, RecursionDepth: c.RecursionDepth, Validator: c.Validator,
			DedupeKeys: c.DedupeKeys,
			HeapTarget: heapTarget,
		},
		outputs:          &outputs{gcs: gcs},
		openExportBucket: gcs.open,
		owner:            instanceID(),
		lease:            c.Lease,
		now:              time.Now,
	}
}

// instanceID names this process in the ledger: the Cloud Run execution and task when there is one, and a random
// suffix, so that a restarted task is a different owner.
func instanceID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	if exec := os.Getenv("CLOUD_RUN_EXECUTION"); exec != "" {
		host = exec + "/" + os.Getenv("CLOUD_RUN_TASK_INDEX")
	}
	return host + "-" + hex.EncodeToString(b[:])
}

// newPubSub is a Pub/Sub client for project (PUBSUB_EMULATOR_HOST is honoured by the client library).
func newPubSub(ctx context.Context, project string, opts ...option.ClientOption) (*pubsub.Client, error) {
	if project == "" {
		return nil, errors.New("--project (GOOGLE_CLOUD_PROJECT) is required for Pub/Sub")
	}
	c, err := pubsub.NewClient(ctx, project, opts...)
	if err != nil {
		return nil, fmt.Errorf("pubsub client: %w", err)
	}
	return c, nil
}

// topicDeadLetter publishes poison messages, unchanged, to a dead-letter topic, with the reason in attributes. It is
// the topic the subscription's dead-letter policy uses, so that poison and messages that kept failing are read in
// one place.
type topicDeadLetter struct{ pub *pubsub.Publisher }

func (t topicDeadLetter) DeadLetter(ctx context.Context, d delivery, reason string) error {
	attrs := make(map[string]string, len(d.Attributes)+3)
	for k, v := range d.Attributes {
		attrs[k] = v
	}
	if len(reason) > 1000 {
		reason = reason[:1000]
	}
	attrs["fhirlake_poison_reason"] = reason
	attrs["fhirlake_message_id"] = d.ID
	attrs["fhirlake_source"] = d.Source
	if _, err := t.pub.Publish(ctx, &pubsub.Message{Data: d.Data, Attributes: attrs}).Get(ctx); err != nil {
		return fmt.Errorf("publish dead letter to %s: %w", t.pub, err)
	}
	return nil
}
