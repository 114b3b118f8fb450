package pipeline

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestFeedOwnReaderFirst: a decoder takes its own reader's batches first, and waits for its reader (up to its
// patience) before it takes another reader's; once its reader is done, the others'; then it reports the end.
func TestFeedOwnReaderFirst(t *testing.T) {
	chans := []chan batch{make(chan batch, 4), make(chan batch, 4)}
	for _, key := range []string{"a1", "a2"} {
		chans[0] <- batch{key: key}
	}
	for _, key := range []string{"b1", "b2", "b3", "b4"} {
		chans[1] <- batch{key: key}
	}
	close(chans[1]) // b's reader is done; its batches wait
	f := newFeed(chans, 0)
	var got []string
	take := func() bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b, ok, err := f.next(ctx)
		if err != nil {
			t.Fatalf("next after %v: %v", got, err)
		}
		if ok {
			got = append(got, b.key)
		}
		return ok
	}
	take()
	take()
	// The own reader has nothing ready but goes on: the decoder waits for it rather than take b's batches.
	f.patience = 10 * time.Second
	go func() {
		time.Sleep(20 * time.Millisecond)
		chans[0] <- batch{key: "a3"}
	}()
	take()
	// A reader that keeps its decoder waiting longer than its patience: the decoder takes b's batch, then its own
	// again when it has one.
	f.patience = time.Millisecond
	take()
	chans[0] <- batch{key: "a4"}
	take()
	close(chans[0])
	for take() {
		if len(got) > 10 {
			t.Fatal("no end")
		}
	}
	want := []string{"a1", "a2", "a3", "b1", "a4", "b2", "b3", "b4"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// Decoder 1 of the same readers starts with b's channel.
	chans = []chan batch{make(chan batch, 1), make(chan batch, 1)}
	chans[0] <- batch{key: "a"}
	chans[1] <- batch{key: "b"}
	if b, ok, err := newFeed(chans, 1).next(context.Background()); err != nil || !ok || b.key != "b" {
		t.Errorf("decoder 1 took %q, %v, %v; want its own reader's b", b.key, ok, err)
	}
}

// TestFeedOtherReaders: once its reader is done, a decoder waits for whichever reader hands a batch over first,
// and a cancelled run ends the wait.
func TestFeedOtherReaders(t *testing.T) {
	chans := []chan batch{make(chan batch), make(chan batch), make(chan batch)}
	close(chans[0])
	f := newFeed(chans, 0)
	go func() {
		time.Sleep(20 * time.Millisecond)
		chans[2] <- batch{key: "c"}
	}()
	if b, ok, err := f.next(context.Background()); err != nil || !ok || b.key != "c" {
		t.Fatalf("took %q, %v, %v; want c", b.key, ok, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	if _, ok, err := f.next(ctx); ok || !errors.Is(err, context.Canceled) {
		t.Fatalf("next in a cancelled run: ok %v, err %v; want context.Canceled", ok, err)
	}
	close(chans[1])
	close(chans[2])
	if _, ok, err := f.next(context.Background()); ok || err != nil {
		t.Fatalf("next with every reader done: ok %v, err %v; want the end", ok, err)
	}
}
