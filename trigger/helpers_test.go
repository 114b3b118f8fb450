package trigger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

const testStore = "healthcaretest/testdata/store"

// clock is a fake clock: Sleep advances it at once and records the delay.
type clock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func newClock() *clock { return &clock{now: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.sleeps = append(c.sleeps, d)
	return nil
}

func (c *clock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// env is a fake Healthcare API writing into a file bucket, and a Client on the fake clock pointed at it.
type env struct {
	fake   *healthcaretest.Server
	client *trigger.Client
	clock  *clock
	dir    string // the bucket's directory
}

// newEnv starts a fake over store. Zero clock-related options of co get the fake clock; Floor defaults to 1s.
func newEnv(t *testing.T, store string, fo healthcaretest.Options, co trigger.Options) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{clock: newClock(), dir: t.TempDir()}
	bucket, err := fileblob.OpenBucket(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bucket.Close() })
	fo.Bucket = bucket
	if fo.Now == nil {
		fo.Now = e.clock.Now
	}
	e.fake, err = healthcaretest.New(store, fo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.fake.Close)
	svc, err := e.fake.Service(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if co.Now == nil {
		co.Now = e.clock.Now
	}
	if co.Sleep == nil {
		co.Sleep = e.clock.Sleep
	}
	if co.Floor == 0 {
		co.Floor = time.Second
	}
	if co.Rand == nil {
		co.Rand = func() float64 { return 0.5 }
	}
	co.OpenBucket = e.openBucket
	e.client = trigger.New(svc, co)
	return e
}

func (e *env) openBucket(ctx context.Context, name string) (*blob.Bucket, error) {
	if name != e.fake.BucketName() {
		return nil, fmt.Errorf("no bucket %s", name)
	}
	return fileblob.OpenBucket(e.dir, nil)
}

// lines reads an object and returns its lines.
func (e *env) lines(t *testing.T, key string) [][]byte {
	t.Helper()
	b, err := fileblob.OpenBucket(e.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
}

// ids is "Type/id" of each line.
func ids(t *testing.T, lines [][]byte) []string {
	t.Helper()
	var out []string
	for _, l := range lines {
		var r struct{ ResourceType, ID string }
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatalf("line is not JSON: %v", err)
		}
		out = append(out, r.ResourceType+"/"+r.ID)
	}
	return out
}

// storeDest is a fresh store-export destination in the fake's bucket.
func (e *env) storeDest(prefix string) string { return "gs://" + e.fake.BucketName() + "/" + prefix }
