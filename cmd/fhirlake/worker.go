package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
)

// runCmd is `fhirlake run --message JSON|@file`: one run, as a Cloud Run job started with an override.
// Exit codes: 0 published (or published before), 1 not finished (a retry resumes it), 2 usage or poison message,
// 3 failed for good.
func runCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var c runConfig
	var tc taskConfig
	var message string
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addRunFlags(fs, &c)
	addTaskFlags(fs, &tc)
	fs.StringVar(&message, "message", "", "the message: JSON, or @file to read it from a file")
	err := parseFlags(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = errors.Join(append(tc.errors(), c.validate())...)
	}
	if err == nil && message == "" {
		err = errors.New("--message is required (FHIRLAKE_MESSAGE)")
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake run: %v\n", err)
		return 2
	}
	data := []byte(message)
	if name, ok := strings.CutPrefix(message, "@"); ok {
		if data, err = os.ReadFile(name); err != nil {
			fmt.Fprintf(stderr, "fhirlake run: read message: %v\n", err)
			return 2
		}
	}
	log := newLogger(c.Log, stderr)
	r, err := newRunner(ctx, c, log)
	if err != nil {
		log.Error("set up", "err", err)
		return 1
	}
	defer r.outputs.Close()
	if c.DeadLetterTopic != "" {
		ps, err := newPubSub(ctx, c.Project)
		if err != nil {
			log.Error("set up", "err", err)
			return 1
		}
		defer ps.Close()
		pub := ps.Publisher(c.DeadLetterTopic)
		defer pub.Stop()
		r.deadLetter = topicDeadLetter{pub}
	}
	if tc.spread() {
		r.owner = taskOwner(getenv, tc.TaskIndex)
		o := r.handleTask(ctx, delivery{Data: data, Source: "job"}, tc)
		if o.Verdict == ack && o.Err == nil && o.Manifest == nil && !o.Already {
			fmt.Fprintf(stdout, "task %d of %d of run %s done; the last task to finish publishes the run\n", tc.TaskIndex, tc.Tasks, o.RunID)
			return 0
		}
		return runExit(o, stdout)
	}
	o := r.handle(ctx, delivery{Data: data, Source: "job"})
	return runExit(o, stdout)
}

func runExit(o outcome, stdout io.Writer) int {
	switch {
	case o.Poison != "":
		return 2
	case o.Verdict == nack:
		return 1
	case o.Err != nil:
		return 3
	}
	if o.Manifest != nil {
		if err := printSummary(stdout, o.Manifest, o.Manifest.Finished.Sub(o.Manifest.Started)); err != nil {
			return 1
		}
	} else {
		fmt.Fprintf(stdout, "run %s was published before; nothing to do\n", o.RunID)
	}
	return 0
}

// workerConfig is `fhirlake worker`'s configuration.
type workerConfig struct {
	runConfig
	Subscription           string
	MaxOutstandingMessages int
	MaxOutstandingBytes    int
	MaxExtension           time.Duration
	ExitWhenIdle           time.Duration
}

func addWorkerFlags(fs *flag.FlagSet, c *workerConfig) {
	addRunFlags(fs, &c.runConfig)
	fs.StringVar(&c.Subscription, "subscription", "", "Pub/Sub subscription to pull messages from (id or projects/p/subscriptions/s)")
	fs.IntVar(&c.MaxOutstandingMessages, "max-outstanding-messages", 1, "messages (runs) held at once")
	fs.IntVar(&c.MaxOutstandingBytes, "max-outstanding-bytes", 1<<20, "bytes of messages held at once")
	fs.DurationVar(&c.MaxExtension, "max-extension", 25*time.Hour, "how long a message's ack deadline is extended while its run goes")
	fs.DurationVar(&c.ExitWhenIdle, "exit-when-idle", 0, "exit after this long without a message (0: never), so that a Cloud Run job ends")
}

func (c workerConfig) validate() error {
	errs := []error{c.runConfig.validate()}
	if c.Subscription == "" {
		errs = append(errs, errors.New("--subscription is required (FHIRLAKE_SUBSCRIPTION)"))
	}
	if c.MaxOutstandingMessages < 1 || c.MaxOutstandingBytes < 1024 {
		errs = append(errs, errors.New("--max-outstanding-messages must be at least 1 and --max-outstanding-bytes at least 1024"))
	}
	if c.MaxExtension <= 0 || c.ExitWhenIdle < 0 {
		errs = append(errs, errors.New("--max-extension must be positive and --exit-when-idle 0 or more"))
	}
	return errors.Join(errs...)
}

// workerCmd is `fhirlake worker --subscription S`: a pull subscriber doing one run per message.
func workerCmd(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	var c workerConfig
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addWorkerFlags(fs, &c)
	err := parseFlags(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = c.validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake worker: %v\n", err)
		return 2
	}
	log := newLogger(c.Log, stderr)
	r, err := newRunner(ctx, c.runConfig, log)
	if err != nil {
		log.Error("set up", "err", err)
		return 1
	}
	defer r.outputs.Close()
	ps, err := newPubSub(ctx, c.Project)
	if err != nil {
		log.Error("set up", "err", err)
		return 1
	}
	defer ps.Close()
	if err := work(ctx, c, r, ps, nil); err != nil {
		log.Error("worker stopped", "err", err)
		return 1
	}
	return 0
}

// errWorkDone is the cause with which a caller of work (the demo) cancels it once it has the outcomes it wanted.
var errWorkDone = errors.New("the outcomes wanted are in")

// work pulls messages until ctx ends (SIGTERM) or, with ExitWhenIdle, the queue has been idle that long. Each message
// is one run; its outcome acks or nacks it. after, when set, sees every outcome (tests, demo).
func work(ctx context.Context, c workerConfig, r *runner, ps *pubsub.Client, after func(outcome)) error {
	if c.DeadLetterTopic != "" && r.deadLetter == nil {
		pub := ps.Publisher(c.DeadLetterTopic)
		defer pub.Stop()
		r.deadLetter = topicDeadLetter{pub}
	}
	sub := ps.Subscriber(c.Subscription)
	sub.ReceiveSettings.MaxOutstandingMessages = c.MaxOutstandingMessages
	sub.ReceiveSettings.MaxOutstandingBytes = c.MaxOutstandingBytes
	sub.ReceiveSettings.MaxExtension = c.MaxExtension

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	idle := newIdleTimer(c.ExitWhenIdle, cancel)
	defer idle.stop()
	r.log.Info("worker started", "subscription", c.Subscription, "max_outstanding_messages", c.MaxOutstandingMessages,
		"exit_when_idle", c.ExitWhenIdle.String())
	err := sub.Receive(rctx, func(mctx context.Context, msg *pubsub.Message) {
		idle.busy()
		defer idle.done()
		o := r.handle(mctx, delivery{Data: msg.Data, Attributes: msg.Attributes, ID: msg.ID, Source: c.Subscription})
		if o.Verdict == ack {
			msg.Ack()
		} else {
			msg.Nack()
		}
		if after != nil {
			after(o)
		}
	})
	if err != nil {
		return fmt.Errorf("receive from %s: %w", c.Subscription, err)
	}
	switch {
	case errors.Is(context.Cause(ctx), errWorkDone):
		r.log.Info("worker stopped: the outcomes it was run for are in")
	case ctx.Err() != nil:
		r.log.Info("worker stopped by signal: in-flight runs were cancelled, left resumable and nacked")
	default:
		r.log.Info("worker idle: exiting", "idle", c.ExitWhenIdle.String())
	}
	return nil
}

// idleTimer calls fire once no message has been in flight for d (d 0: never).
type idleTimer struct {
	d        time.Duration
	mu       sync.Mutex
	inflight int
	t        *time.Timer
}

func newIdleTimer(d time.Duration, fire func()) *idleTimer {
	it := &idleTimer{d: d}
	if d > 0 {
		it.t = time.AfterFunc(d, func() {
			it.mu.Lock()
			idle := it.inflight == 0
			it.mu.Unlock()
			if idle {
				fire()
			}
		})
	}
	return it
}

func (it *idleTimer) busy() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.inflight++
	if it.t != nil {
		it.t.Stop()
	}
}

func (it *idleTimer) done() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.inflight--
	if it.t != nil && it.inflight == 0 {
		it.t.Reset(it.d)
	}
}

func (it *idleTimer) stop() {
	if it.t != nil {
		it.t.Stop()
	}
}
