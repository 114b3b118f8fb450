package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"cloud.google.com/go/storage"
	"github.com/googleapis/gax-go/v2"
	"gocloud.dev/blob"
	"gocloud.dev/blob/gcsblob"
	"google.golang.org/api/option"
	htransport "google.golang.org/api/transport/http"
)

// gcsOptions are how the Cloud Storage client of the message-driven commands rides out faults. Every call is retried
// with the storage client's own retry (storage.WithPolicy(storage.RetryAlways): every object fhirlake writes is
// written whole under a key of its run, so writing it again is harmless, and create-if-absent writes carry their
// precondition), and a read cut short resumes at its byte offset (the storage client reopens it on
// io.ErrUnexpectedEOF). A request that gets no answer, or a body that stops arriving, for Stall is abandoned as a
// retryable failure. When the retries run out the call fails, and the run with it.
type gcsOptions struct {
	// Attempts bounds the tries of one call, the first included (storage.WithMaxAttempts).
	Attempts int
	// Backoff is the delay between tries (storage.WithBackoff).
	Backoff gax.Backoff
	// Stall is how long a request may wait for its response headers, and a response body for its next bytes.
	Stall time.Duration

	// Endpoint, Transport and NoAuth are for tests: the storage endpoint (zero: the real service, or
	// STORAGE_EMULATOR_HOST), the transport under the stall guard (zero: a clone of http.DefaultTransport), and no
	// credentials.
	Endpoint  string
	Transport *http.Transport
	NoAuth    bool
}

// defaultGCS is production's: up to 8 tries over about 1.5 minutes (1s doubling to 30s, with the storage client's
// jitter), and a stall is a minute without progress.
var defaultGCS = gcsOptions{
	Attempts: 8,
	Backoff:  gax.Backoff{Initial: time.Second, Max: 30 * time.Second, Multiplier: 2},
	Stall:    time.Minute,
}

// newGCSClient is the storage client of o: JSON reads (the API the tests run against fake-gcs-server), the retry
// settings above, and the stall guard under the credentials.
func newGCSClient(ctx context.Context, o gcsOptions) (*storage.Client, error) {
	base := o.Transport
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	} else {
		base = base.Clone()
	}
	base.ResponseHeaderTimeout = o.Stall
	var rt http.RoundTripper = &guard{next: base, stall: o.Stall, attempts: o.Attempts, resumes: map[string]resumed{}, failed: map[string]string{}}
	opts := []option.ClientOption{storage.WithJSONReads()}
	if o.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(o.Endpoint))
	}
	if !o.NoAuth && os.Getenv("STORAGE_EMULATOR_HOST") == "" {
		var err error
		rt, err = htransport.NewTransport(ctx, rt, option.WithScopes(storage.ScopeFullControl))
		if err != nil {
			return nil, fmt.Errorf("storage client credentials: %w", err)
		}
	}
	opts = append(opts, option.WithHTTPClient(&http.Client{Transport: rt}))
	c, err := storage.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("storage client: %w", err)
	}
	c.SetRetry(storage.WithPolicy(storage.RetryAlways), storage.WithBackoff(o.Backoff), storage.WithMaxAttempts(o.Attempts))
	return c, nil
}

// gcsBuckets opens gs:// buckets on one storage client, made on first use (a run that touches no bucket needs no
// credentials).
type gcsBuckets struct {
	opts gcsOptions

	once   sync.Once
	client *storage.Client
	err    error
}

func (g *gcsBuckets) open(ctx context.Context, name string) (*blob.Bucket, error) {
	g.once.Do(func() {
		if g.client == nil {
			g.client, g.err = newGCSClient(context.WithoutCancel(ctx), g.opts)
		}
	})
	if g.err != nil {
		return nil, g.err
	}
	b, err := gcsblob.OpenBucket(ctx, nil, name, &gcsblob.Options{Client: g.client})
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", name, err)
	}
	return b, nil
}

// Close closes the client, if one was made.
func (g *gcsBuckets) Close() {
	if g.client != nil {
		g.client.Close()
	}
}

// errStalled is a response body that made no progress for the stall timeout. It is an io.ErrUnexpectedEOF, which the
// storage client retries, resuming a read at its offset.
var errStalled = fmt.Errorf("response body stalled: %w", io.ErrUnexpectedEOF)

// errRetryBudget is a request past the retry budget. The storage client retries neither it nor what wraps it.
var errRetryBudget = errors.New("retry budget of Cloud Storage calls spent")

// guard holds the storage client to the budget of gcsOptions where its own settings do not reach:
//
//   - a request or a body that makes no progress for stall fails retryably (errStalled, or the transport's
//     ResponseHeaderTimeout);
//   - a request whose gccl-attempt-count header (set by the client on every try) is past attempts fails for good:
//     uploads follow only the per-chunk retry deadline, and one small enough for a single request is retried
//     until its context ends;
//   - a read resumed at the same offset more than attempts times in a row fails for good: the client reopens a
//     read cut short without limit;
//   - the answer to an upload is read whole before the client sees it, so that one cut short is retried.
type guard struct {
	next     http.RoundTripper
	stall    time.Duration
	attempts int

	mu      sync.Mutex
	resumes map[string]resumed // by URL path: reads cut short and not yet read to their end
	failed  map[string]string  // by call: how its last try failed
}

type resumed struct {
	at    string // the Range header of the last resume
	tries int
}

// attemptCountRE finds the call (its invocation id) and the try in the X-Goog-Api-Client header.
var attemptCountRE = regexp.MustCompile(`gccl-invocation-id/(\S+) gccl-attempt-count/(\d+)`)

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	call := ""
	if m := attemptCountRE.FindStringSubmatch(req.Header.Get("X-Goog-Api-Client")); m != nil && g.attempts > 0 {
		call = m[1]
		if n, _ := strconv.Atoi(m[2]); n > g.attempts {
			g.mu.Lock()
			last := g.failed[call]
			delete(g.failed, call)
			g.mu.Unlock()
			return nil, fmt.Errorf("%s try %d (the last one: %s): %w", req.Method, n, last, errRetryBudget)
		}
	}
	read := req.Method == http.MethodGet && req.URL.Query().Get("alt") == "media"
	if rng := req.Header.Get("Range"); read && rng != "" {
		g.mu.Lock()
		r := g.resumes[req.URL.Path]
		if r.at == rng {
			r.tries++
		} else {
			r = resumed{at: rng, tries: 1}
		}
		g.resumes[req.URL.Path] = r
		g.mu.Unlock()
		if g.attempts > 0 && r.tries > g.attempts {
			return nil, fmt.Errorf("read resumed at %s %d times without progress: %w", rng, r.tries, errRetryBudget)
		}
	}
	res, err := g.next.RoundTrip(req)
	if call != "" {
		g.mu.Lock()
		switch {
		case err != nil:
			g.failed[call] = "no answer"
		case res.StatusCode >= 300:
			g.failed[call] = res.Status
		default:
			delete(g.failed, call)
		}
		g.mu.Unlock()
	}
	if err != nil {
		return res, err
	}
	b := &guardedBody{rc: res.Body, stall: g.stall}
	if read {
		b.done = func() { g.mu.Lock(); delete(g.resumes, req.URL.Path); g.mu.Unlock() }
	}
	res.Body = b
	if strings.HasPrefix(req.URL.Path, "/upload/") {
		// The client reads an upload's answer after its retry loop: one lost now would fail the write. Read here, it
		// is a transport error, retried like any other (a whole object is sent again).
		data, err := io.ReadAll(b)
		b.Close()
		if err != nil {
			return nil, fmt.Errorf("read the answer to an upload: %w", err)
		}
		res.Body = io.NopCloser(bytes.NewReader(data))
	}
	return res, nil
}

// guardedBody fails a read that waits longer than stall, and calls done when the body is read to its end.
type guardedBody struct {
	rc      io.ReadCloser
	stall   time.Duration
	stalled atomic.Bool
	done    func()
}

func (b *guardedBody) Read(p []byte) (int, error) {
	var t *time.Timer
	if b.stall > 0 {
		t = time.AfterFunc(b.stall, func() {
			b.stalled.Store(true)
			b.rc.Close()
		})
	}
	n, err := b.rc.Read(p)
	if t != nil {
		t.Stop()
	}
	switch {
	case b.stalled.Load(): // whatever the closed body said, it did not end
		err = errStalled
	case err == io.EOF && b.done != nil:
		b.done()
	}
	return n, err
}

func (b *guardedBody) Close() error { return b.rc.Close() }
