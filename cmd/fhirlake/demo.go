package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"gocloud.dev/blob"
	"gocloud.dev/blob/gcsblob"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

// demoStore is the FHIR store the demo's fake Healthcare API serves, relative to the repository root (the README
// runs the demo from there); the embedded sample stands in when it is absent.
const demoStore = "../shared/data/synthea-100"

// demoIdle is how long the demo's worker waits for its message before it gives up.
const demoIdle = 30 * time.Second

const (
	fakeProject      = "fhirlake-demo"
	fakeTopic        = "runs"
	fakeSubscription = "runs-worker"
	fakeDeadLetter   = "runs-dead-letter"
	fakeExportBucket = "fhirlake-exports"
)

// fakes are in-process stand-ins for the cloud: Pub/Sub (pstest), Cloud Storage (fake-gcs-server, holding the
// exports) and the Healthcare API (trigger/healthcaretest), wired as production wires the real ones.
type fakes struct {
	pubsub     *pstest.Server
	ps         *pubsub.Client
	gcs        *fakestorage.Server
	gcsClient  *storage.Client
	healthcare *healthcaretest.Server
	closers    []func()
}

// startFakes starts the fakes with a FHIR store loaded from storeDir.
func startFakes(ctx context.Context, storeDir string, hopts healthcaretest.Options) (_ *fakes, err error) {
	f := &fakes{}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	f.pubsub = pstest.NewServer()
	f.closers = append(f.closers, func() { f.pubsub.Close() })
	conn, err := grpc.NewClient(f.pubsub.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial pstest: %w", err)
	}
	f.closers = append(f.closers, func() { conn.Close() })
	if f.ps, err = pubsub.NewClient(ctx, fakeProject, option.WithGRPCConn(conn)); err != nil {
		return nil, fmt.Errorf("pubsub client: %w", err)
	}
	f.closers = append(f.closers, func() { f.ps.Close() })
	for _, t := range []string{fakeTopic, fakeDeadLetter} {
		if _, err := f.ps.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: f.topic(t)}); err != nil {
			return nil, fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	if _, err := f.ps.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: f.subscription(fakeSubscription), Topic: f.topic(fakeTopic), AckDeadlineSeconds: 60,
		DeadLetterPolicy: &pubsubpb.DeadLetterPolicy{DeadLetterTopic: f.topic(fakeDeadLetter), MaxDeliveryAttempts: 5},
	}); err != nil {
		return nil, fmt.Errorf("create subscription: %w", err)
	}
	if _, err := f.ps.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: f.subscription(fakeDeadLetter), Topic: f.topic(fakeDeadLetter), AckDeadlineSeconds: 60,
	}); err != nil {
		return nil, fmt.Errorf("create dead-letter subscription: %w", err)
	}

	f.gcs, err = fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, Writer: io.Discard})
	if err != nil {
		return nil, fmt.Errorf("start fake Cloud Storage: %w", err)
	}
	f.closers = append(f.closers, f.gcs.Stop)
	f.gcs.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: fakeExportBucket})
	f.gcsClient, err = storage.NewClient(ctx, option.WithHTTPClient(f.gcs.HTTPClient()), option.WithoutAuthentication(),
		storage.WithJSONReads())
	if err != nil {
		return nil, fmt.Errorf("storage client: %w", err)
	}
	f.closers = append(f.closers, func() { f.gcsClient.Close() })
	exports, err := f.openBucket(ctx, fakeExportBucket)
	if err != nil {
		return nil, err
	}
	f.closers = append(f.closers, func() { exports.Close() })
	hopts.Bucket, hopts.BucketName = exports, fakeExportBucket
	if f.healthcare, err = healthcaretest.New(storeDir, hopts); err != nil {
		return nil, err
	}
	f.closers = append(f.closers, f.healthcare.Close)
	return f, nil
}

func (f *fakes) topic(id string) string { return "projects/" + fakeProject + "/topics/" + id }
func (f *fakes) subscription(id string) string {
	return "projects/" + fakeProject + "/subscriptions/" + id
}

// openBucket opens a bucket of the fake Cloud Storage.
func (f *fakes) openBucket(ctx context.Context, name string) (*blob.Bucket, error) {
	b, err := gcsblob.OpenBucket(ctx, nil, name, &gcsblob.Options{Client: f.gcsClient})
	if err != nil {
		return nil, fmt.Errorf("open fake bucket %s: %w", name, err)
	}
	return b, nil
}

// runner is a runner of c wired to the fakes.
func (f *fakes) runner(ctx context.Context, c runConfig, log *slog.Logger) (*runner, error) {
	svc, err := f.healthcare.Service(ctx)
	if err != nil {
		return nil, err
	}
	r := c.runner(svc, log)
	r.openExportBucket = f.openBucket
	return r, nil
}

// publish publishes data to the runs topic and returns the message id.
func (f *fakes) publish(ctx context.Context, data []byte) (string, error) {
	pub := f.ps.Publisher(f.topic(fakeTopic))
	defer pub.Stop()
	id, err := pub.Publish(ctx, &pubsub.Message{Data: data}).Get(ctx)
	if err != nil {
		return "", fmt.Errorf("publish: %w", err)
	}
	return id, nil
}

func (f *fakes) Close() {
	for i := len(f.closers) - 1; i >= 0; i-- {
		f.closers[i]()
	}
}

// demoCmd is `fhirlake demo [--out DIR]`: a message through the real worker path, against in-process fakes.
func demoCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var out, store string
	var logc logConfig
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&out, "out", "./fhirlake-demo", "directory the published run goes to")
	fs.StringVar(&store, "store", "", "directory of NDJSON the fake FHIR store serves (empty: "+demoStore+", or the embedded sample)")
	addLogFlags(fs, &logc)
	err := parseFlags(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = logc.validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake demo: %v\n", err)
		return 2
	}
	log := newLogger(logc, stderr)
	if err := demo(ctx, out, store, log, stdout); err != nil {
		log.Error("demo failed", "err", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, out, store string, log *slog.Logger, stdout io.Writer) error {
	started := time.Now()
	if store == "" {
		store = demoStore
		if _, err := os.Stat(store); err != nil {
			dir, err := os.MkdirTemp("", "fhirlake-demo-store")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			if err := writeSample(dir); err != nil {
				return err
			}
			store = dir
		}
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	f, err := startFakes(ctx, store, healthcaretest.Options{Polls: 2})
	if err != nil {
		return err
	}
	defer f.Close()

	output := "file://" + filepath.ToSlash(abs)
	c := workerConfig{
		runConfig: runConfig{
			AllowStores: f.healthcare.StoreName(), AllowOutputs: output, DeadLetterTopic: f.topic(fakeDeadLetter),
			Lease: time.Minute, ExportDeadline: time.Hour, PollFloor: 50 * time.Millisecond, PollCap: 200 * time.Millisecond,
			MaxLineBytes: 64 << 20, RecursionDepth: 2, Validator: "fast",
		},
		Subscription: f.subscription(fakeSubscription), MaxOutstandingMessages: 1, MaxOutstandingBytes: 1 << 20,
		// The worker stops once its message is acked (below); the idle exit is a safety net only, long enough for a
		// loaded machine to deliver the message.
		MaxExtension: time.Hour, ExitWhenIdle: demoIdle,
	}
	r, err := f.runner(ctx, c.runConfig, log)
	if err != nil {
		return err
	}
	defer r.outputs.Close()
	msg := fmt.Sprintf(`{"version":1,"store":%q,"kind":"bulk","output":%q}`, f.healthcare.StoreName(), output)
	m, err := trigger.ParseMessage([]byte(msg), r.policy)
	if err != nil {
		return err
	}
	id, err := f.publish(ctx, []byte(msg))
	if err != nil {
		return err
	}
	log.Info("demo message published", "message_id", id, "run_id", m.RunID, "store", store)
	var last *outcome
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	err = work(wctx, c, r, f.ps, func(o outcome) {
		last = &o
		if o.Verdict == ack { // published, or failed for good: a nacked run is delivered again
			stop(errWorkDone)
		}
	})
	switch {
	case err != nil:
		return err
	case ctx.Err() != nil:
		return fmt.Errorf("demo: %w", ctx.Err())
	case last == nil:
		return fmt.Errorf("demo: the worker saw no message in %s", demoIdle)
	case last.Err != nil:
		return last.Err
	}
	mf := last.Manifest
	if mf == nil { // published by an earlier demo into the same directory
		b, prefix, done, err := r.outputs.open(ctx, output)
		if err != nil {
			return err
		}
		defer done()
		if mf, err = sinks.ReadManifest(ctx, b, runPrefix(prefix, m.RunID)); err != nil {
			return err
		}
	}
	if err := printSummary(stdout, mf, mf.Finished.Sub(mf.Started)); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "run %s published in %s (the message, export and timings are in its _manifest.json); demo took %.1fs\n",
		m.RunID, filepath.Join(out, m.RunID), time.Since(started).Seconds())
	return err
}

// writeSample writes the embedded sample into dir.
func writeSample(dir string) error {
	return fs.WalkDir(sample, "sample", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := sample.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, d.Name()), data, 0o644)
	})
}
