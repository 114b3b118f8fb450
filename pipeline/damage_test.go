package pipeline

import (
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestDamageOf keeps the line between damage, which rejects an object and lets the run go on, and a failure to
// read, which stops the run. Errors arrive wrapped as the reader wraps them.
func TestDamageOf(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("read a.ndjson.gz line 7: gunzip: %w", err) }
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name   string
		ctx    context.Context
		err    error
		damage string // "" for none
	}{
		{name: "no error", err: nil},
		{name: "bad header", err: wrap(gzip.ErrHeader), damage: "header"},
		{name: "bad checksum", err: wrap(gzip.ErrChecksum), damage: "checksum"},
		{name: "corrupt deflate data", err: wrap(flate.CorruptInputError(1234)), damage: "corrupt gzip data at compressed byte 1234"},
		{name: "truncated", err: wrap(io.ErrUnexpectedEOF), damage: "truncated"},
		{name: "connection reset", err: wrap(errors.New("read tcp: connection reset by peer"))},
		{name: "storage CRC mismatch in transfer", err: errors.New("read a line 1: storage: bad CRC on read: got 1, want 2")},
		{name: "no progress", err: wrap(io.ErrNoProgress)},
		{name: "cancelled while reading", ctx: cancelled, err: wrap(io.ErrUnexpectedEOF)},
		{name: "deadline", err: wrap(context.DeadlineExceeded)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			reason, ok := damageOf(ctx, tt.err)
			if ok != (tt.damage != "") {
				t.Fatalf("damageOf = %q, %v; want damage %v", reason, ok, tt.damage != "")
			}
			if ok && !strings.Contains(reason, tt.damage) {
				t.Errorf("reason %q does not say %q", reason, tt.damage)
			}
		})
	}
}
