package trigger

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/gcsblob" // the default Options.OpenBucket opens gs:// buckets
	healthcare "google.golang.org/api/healthcare/v1"
)

// Options tune a Client. The zero value works.
type Options struct {
	// Floor and Cap bound the delay between polls, which doubles from Floor up to Cap (zero: 2s and 1m).
	Floor, Cap time.Duration
	// Jitter is the share of each delay taken off at random, in [0, 1) (zero: 0.2; negative: no jitter).
	Jitter float64
	// Deadline is how long an export may run, counted from Handle.Started (zero: 24h). When it passes, Wait cancels
	// the export and returns ErrDeadline.
	Deadline time.Duration
	// MaxRetries bounds the consecutive transient failures (429, 5xx, reset connection) tolerated on one call
	// (zero: 8).
	MaxRetries int
	// Now and Sleep are the clock (zero: time.Now and a timer that stops on ctx).
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for jitter (zero: math/rand/v2).
	Rand func() float64
	// OpenBucket opens the Cloud Storage bucket of that name (zero: blob.OpenBucket of gs://name). Output objects are
	// listed and checked through it; Wait closes what it opens.
	OpenBucket func(ctx context.Context, name string) (*blob.Bucket, error)
	// OnProgress, when set, is called after every poll answered.
	OnProgress func(Progress)
}

// Client starts and waits on exports of one Healthcare API service.
type Client struct {
	svc  *healthcare.Service
	opts Options
}

// New returns a Client calling svc (built by the caller with its credentials and endpoint).
func New(svc *healthcare.Service, opts Options) *Client {
	if opts.Floor <= 0 {
		opts.Floor = 2 * time.Second
	}
	if opts.Cap <= 0 {
		opts.Cap = time.Minute
	}
	if opts.Cap < opts.Floor {
		opts.Cap = opts.Floor
	}
	switch {
	case opts.Jitter == 0:
		opts.Jitter = 0.2
	case opts.Jitter < 0:
		opts.Jitter = 0
	case opts.Jitter >= 1:
		opts.Jitter = 0.99
	}
	if opts.Deadline <= 0 {
		opts.Deadline = 24 * time.Hour
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 8
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.OpenBucket == nil {
		opts.OpenBucket = func(ctx context.Context, name string) (*blob.Bucket, error) {
			return blob.OpenBucket(ctx, "gs://"+name)
		}
	}
	return &Client{svc: svc, opts: opts}
}

// Start starts the export r asks for and returns its Handle. It retries, a bounded number of times, a start the
// service refused with 429 or 503 (nothing was started) and, for the bulk kinds only, a start whose connection
// dropped: that may leave an orphan export, but its files carry their own export id. A store export is not retried on
// a dropped connection, since an orphan would write into the same destination.
func (c *Client) Start(ctx context.Context, r Request) (Handle, error) {
	if err := r.Validate(); err != nil {
		return Handle{}, err
	}
	h := Handle{Kind: r.Kind, ByPatient: r.ByPatient, Started: c.opts.Now()}
	var err error
	switch r.Kind {
	case KindStore:
		h.Destination, err = c.checkEmpty(ctx, r.Destination)
		if err != nil {
			return Handle{}, err
		}
		err = c.retryStart(ctx, r.Kind, func() error {
			h.Operation, err = c.startStore(ctx, r)
			return err
		})
	default:
		err = c.retryStart(ctx, r.Kind, func() error {
			h.Operation, err = c.startBulk(ctx, r)
			return err
		})
	}
	if err != nil {
		return Handle{}, fmt.Errorf("start %s export of %s: %w", r.Kind, r.Store, err)
	}
	return h, nil
}

// retryStart runs start again while it fails in a way Start may retry (see Start).
func (c *Client) retryStart(ctx context.Context, kind Kind, start func() error) error {
	for attempt := 0; ; attempt++ {
		err := start()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		code, retryAfter := c.statusOf(err)
		retry := code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable ||
			(code == 0 && kind != KindStore && transient(err))
		if !retry || attempt >= c.opts.MaxRetries {
			return err
		}
		d := c.delay(attempt, retryAfter)
		if err := c.opts.Sleep(ctx, d); err != nil {
			return fmt.Errorf("wait to retry start: %w", err)
		}
	}
}

// Wait waits for the export h to finish and returns its output. It polls with backoff until the export is done, fails
// or outlives Options.Deadline (then it cancels the export and returns ErrDeadline). A cancelled ctx stops the wait
// and leaves the export running: Wait again with the same Handle to resume.
func (c *Client) Wait(ctx context.Context, h Handle) (*Output, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	started := h.Started
	if started.IsZero() {
		started = c.opts.Now()
	}
	deadline := started.Add(c.opts.Deadline)
	var prog Progress
	for attempt := 0; ; attempt++ {
		st, err := c.pollRetrying(ctx, h, deadline)
		if err != nil {
			return nil, err
		}
		prog.Polls++
		prog.Done = st.done
		prog.Message = st.message
		prog.Success, prog.Failure, prog.Pending = st.success, st.failure, st.pending
		if c.opts.OnProgress != nil {
			c.opts.OnProgress(prog)
		}
		if st.failed != "" {
			return nil, fmt.Errorf("%s export %s: %s: %w", h.Kind, h.Operation, st.failed, ErrFailed)
		}
		if st.done {
			out, err := c.discover(ctx, h, st)
			if err != nil {
				return nil, err
			}
			out.Progress = prog
			return out, nil
		}
		now := c.opts.Now()
		if !now.Before(deadline) {
			return nil, c.expire(ctx, h)
		}
		d := min(c.delay(attempt, st.retryAfter), deadline.Sub(now))
		if err := c.opts.Sleep(ctx, d); err != nil {
			return nil, fmt.Errorf("wait on %s export %s: %w", h.Kind, h.Operation, err)
		}
	}
}

// pollRetrying polls h once, retrying transient failures up to MaxRetries times in a row and no later than deadline.
func (c *Client) pollRetrying(ctx context.Context, h Handle, deadline time.Time) (status, error) {
	for failures := 0; ; failures++ {
		var st status
		var err error
		if h.Kind == KindStore {
			st, err = c.pollStore(ctx, h)
		} else {
			st, err = c.pollBulk(ctx, h)
		}
		if err == nil {
			return st, nil
		}
		if ctx.Err() != nil {
			return status{}, fmt.Errorf("poll %s export %s: %w", h.Kind, h.Operation, ctx.Err())
		}
		if !transient(err) || failures >= c.opts.MaxRetries {
			return status{}, fmt.Errorf("poll %s export %s (%d retries): %w", h.Kind, h.Operation, failures, err)
		}
		now := c.opts.Now()
		if !now.Before(deadline) {
			return status{}, errors.Join(c.expire(ctx, h), err)
		}
		_, retryAfter := c.statusOf(err)
		d := min(c.delay(failures, retryAfter), deadline.Sub(now))
		if err := c.opts.Sleep(ctx, d); err != nil {
			return status{}, fmt.Errorf("wait to poll %s export %s: %w", h.Kind, h.Operation, err)
		}
	}
}

// expire cancels an export that outlived the deadline and returns the ErrDeadline error reporting it.
func (c *Client) expire(ctx context.Context, h Handle) error {
	err := fmt.Errorf("%s export %s still running after %s: %w", h.Kind, h.Operation, c.opts.Deadline, ErrDeadline)
	if cerr := c.Cancel(ctx, h); cerr != nil {
		return errors.Join(err, cerr)
	}
	return fmt.Errorf("%w; cancelled", err)
}

// Cancel asks the service to cancel the export h: DeleteFhirOperation for the bulk kinds, operations.cancel for
// KindStore. The service refuses to cancel an export that has finished.
func (c *Client) Cancel(ctx context.Context, h Handle) error {
	if err := h.Validate(); err != nil {
		return err
	}
	var err error
	if h.Kind == KindStore {
		_, err = c.svc.Projects.Locations.Datasets.Operations.Cancel(h.Operation, &healthcare.CancelOperationRequest{}).
			Context(ctx).Do()
	} else {
		err = c.deleteBulk(ctx, h.Operation)
	}
	if err != nil {
		return fmt.Errorf("cancel %s export %s: %w", h.Kind, h.Operation, err)
	}
	return nil
}

// delay is the wait before poll attempt+1: the service's Retry-After when it gave one, else Floor doubled per attempt
// up to Cap, less a random share of up to Jitter.
func (c *Client) delay(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return retryAfter
	}
	d := c.opts.Floor
	for i := 0; i < attempt && d < c.opts.Cap; i++ {
		d *= 2
	}
	d = min(d, c.opts.Cap)
	return d - time.Duration(float64(d)*c.opts.Jitter*c.opts.Rand())
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// checkEmpty normalises a store export destination and makes sure it holds no object yet: the export's objects are
// found by listing it, so anything already there would be taken for output.
func (c *Client) checkEmpty(ctx context.Context, dest string) (string, error) {
	name, prefix, err := parseGS(dest)
	if err != nil {
		return "", err
	}
	b, err := c.opts.OpenBucket(ctx, name)
	if err != nil {
		return "", fmt.Errorf("open bucket %s: %w", name, err)
	}
	defer b.Close()
	objs, _, err := b.ListPage(ctx, blob.FirstPageToken, 1, &blob.ListOptions{Prefix: prefix})
	if err != nil {
		return "", fmt.Errorf("list gs://%s/%s: %w", name, prefix, err)
	}
	if len(objs) > 0 {
		return "", fmt.Errorf("destination gs://%s/%s already holds objects: give each export its own prefix", name, prefix)
	}
	return "gs://" + name + "/" + prefix, nil
}
