package sinks_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"

	"github.com/fhirlake/fhirlake/sinks"
)

func ledgerBuckets(t *testing.T) map[string]*blob.Bucket {
	t.Helper()
	fb, err := fileblob.OpenBucket(t.TempDir(), &fileblob.Options{NoTempDir: true, Metadata: fileblob.MetadataDontWrite})
	if err != nil {
		t.Fatal(err)
	}
	mb := memblob.OpenBucket(nil)
	t.Cleanup(func() { fb.Close(); mb.Close() })
	return map[string]*blob.Bucket{"fileblob": fb, "memblob": mb}
}

// TestClaimRunOnce: of many concurrent claims of one run, exactly one wins; the others get ErrRunClaimed.
// fileblob's create-if-absent is a stat followed by a rename, not atomic, so on a local directory the claims are
// made one after the other (Cloud Storage's generation-0 precondition and memblob are atomic).
func TestClaimRunOnce(t *testing.T) {
	ctx := context.Background()
	for name, b := range ledgerBuckets(t) {
		t.Run(name, func(t *testing.T) {
			const n = 8
			var wg sync.WaitGroup
			var serial sync.Mutex
			errs := make([]error, n)
			for i := range n {
				wg.Go(func() {
					if name == "fileblob" {
						serial.Lock()
						defer serial.Unlock()
					}
					errs[i] = sinks.ClaimRun(ctx, b, "out", sinks.RunState{RunID: "r1", State: sinks.RunClaimed, Attempt: 1, Owner: string(rune('a' + i))})
				})
			}
			wg.Wait()
			won := 0
			for _, err := range errs {
				switch {
				case err == nil:
					won++
				case !errors.Is(err, sinks.ErrRunClaimed):
					t.Errorf("claim: %v, want ErrRunClaimed", err)
				}
			}
			if won != 1 {
				t.Fatalf("%d claims won, want 1", won)
			}
			st, err := sinks.ReadRun(ctx, b, "out", "r1")
			if err != nil {
				t.Fatal(err)
			}
			if st.State != sinks.RunClaimed || st.Attempt != 1 {
				t.Errorf("state %+v", st)
			}
		})
	}
}

func TestTakeOverAndWriteRun(t *testing.T) {
	ctx := context.Background()
	for name, b := range ledgerBuckets(t) {
		t.Run(name, func(t *testing.T) {
			if _, err := sinks.ReadRun(ctx, b, "", "r2"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("ReadRun of a missing run: %v, want ErrNotExist", err)
			}
			st := sinks.RunState{RunID: "r2", State: sinks.RunClaimed, Attempt: 1, Owner: "a"}
			if err := sinks.ClaimRun(ctx, b, "", st); err != nil {
				t.Fatal(err)
			}
			st.State, st.Export = sinks.RunExporting, []byte(`{"kind":"bulk"}`)
			if err := sinks.WriteRun(ctx, b, "", st); err != nil {
				t.Fatal(err)
			}
			// Two workers take over attempt 2: one wins.
			nb := st
			nb.Attempt, nb.Owner = 2, "b"
			if err := sinks.TakeOverRun(ctx, b, "", nb); err != nil {
				t.Fatal(err)
			}
			nc := st
			nc.Attempt, nc.Owner = 2, "c"
			if err := sinks.TakeOverRun(ctx, b, "", nc); !errors.Is(err, sinks.ErrRunClaimed) {
				t.Fatalf("second take-over: %v, want ErrRunClaimed", err)
			}
			got, err := sinks.ReadRun(ctx, b, "", "r2")
			if err != nil {
				t.Fatal(err)
			}
			if got.Owner != "b" || got.Attempt != 2 || got.State != sinks.RunExporting || string(got.Export) != `{"kind":"bulk"}` {
				t.Errorf("state after take-over %+v", got)
			}
		})
	}
}

func TestLastRun(t *testing.T) {
	ctx := context.Background()
	for name, b := range ledgerBuckets(t) {
		t.Run(name, func(t *testing.T) {
			const store = "projects/p/locations/l/datasets/d/fhirStores/s"
			if _, err := sinks.ReadLastRun(ctx, b, "lake", store); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("ReadLastRun before any run: %v, want ErrNotExist", err)
			}
			want := sinks.LastRun{Store: store, RunID: "r1", TransactionTime: "2024-05-01T00:00:00Z", Published: time.Date(2024, 5, 1, 1, 0, 0, 0, time.UTC)}
			if err := sinks.WriteLastRun(ctx, b, "lake", want); err != nil {
				t.Fatal(err)
			}
			got, err := sinks.ReadLastRun(ctx, b, "lake", store)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
			if _, err := sinks.ReadLastRun(ctx, b, "lake", store+"2"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("another store's last run: %v, want ErrNotExist", err)
			}
		})
	}
}

// TestLedgerRefusesHostileRunIDs: a run id that is not one plain path segment reaches no key.
func TestLedgerRefusesHostileRunIDs(t *testing.T) {
	ctx := context.Background()
	for _, id := range []string{"", ".", "..", "../x", "a/b", "a/../../b", "_last", "-a", ".hidden", "a\x00b", "a\nb",
		`a\b`, "a b", "r\u0430n", "a%2Fb", strings.Repeat("a", 64)} {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			b := memblob.OpenBucket(nil)
			defer b.Close()
			st := sinks.RunState{RunID: id, State: sinks.RunClaimed, Attempt: 2}
			errs := []error{
				sinks.ClaimRun(ctx, b, "out", st),
				sinks.TakeOverRun(ctx, b, "out", st),
				sinks.WriteRun(ctx, b, "out", st),
			}
			_, err := sinks.ReadRun(ctx, b, "out", id)
			for i, err := range append(errs, err) {
				if err == nil || !strings.Contains(err.Error(), "is not 1 to 63 letters") {
					t.Errorf("call %d: %v, want a refusal", i, err)
				}
			}
			if objs, _, _ := b.ListPage(ctx, blob.FirstPageToken, 10, nil); len(objs) != 0 {
				t.Errorf("wrote %s", objs[0].Key)
			}
		})
	}
	if err := sinks.ClaimRun(ctx, memblob.OpenBucket(nil), "out", sinks.RunState{RunID: "nightly-2026.11_25"}); err != nil {
		t.Errorf("a valid run id: %v", err)
	}
}
