package reader

import (
	"context"
	"os"
	"testing"
)

// sharedData is ../shared/data from the repository root.
const sharedData = "../../shared/data"

// TestSharedData reads the shared real exports end to end through OpenBucket, List and Open.
func TestSharedData(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 130 MB of shared data")
	}
	tests := []struct {
		name       string
		dir        string
		max        int // Options.MaxLineBytes
		objects    int
		lines      int64
		oversize   int64
		minLongest int64 // the longest line, in bytes, lies in [minLongest, maxLongest]
		maxLongest int64
	}{
		{name: "synthea-100", dir: "synthea-100", objects: 19, lines: 38483, minLongest: 40 << 10, maxLongest: 64 << 10},
		{name: "r4-examples", dir: "r4-examples", objects: 140, lines: 5297, minLongest: 2_700_000, maxLongest: 2_800_000},
		{
			// 246 lines exceed 64 KiB (counted independently with awk): reported, not fatal, and not buffered.
			name: "r4-examples over a 64 KiB limit", dir: "r4-examples", max: 64 << 10, objects: 140, lines: 5297,
			oversize: 246, minLongest: 2_700_000, maxLongest: 2_800_000,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := sharedData + "/" + tt.dir
			if _, err := os.Stat(loc); err != nil {
				t.Skipf("shared data absent: %v", err)
			}
			ctx := context.Background()
			b, prefix, err := OpenBucket(ctx, loc)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			objs, err := List(ctx, b, prefix)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) != tt.objects {
				t.Errorf("%d objects, want %d", len(objs), tt.objects)
			}
			var lines, longest, oversize int64
			for _, o := range objs {
				s, c, err := Open(ctx, b, o.Key, Options{MaxLineBytes: tt.max})
				if err != nil {
					t.Fatal(err)
				}
				var end int64 // offset just past the last line
				for s.Scan() {
					l := s.Line()
					if l.Oversize {
						oversize++
					}
					longest = max(longest, l.Length)
					end = l.Offset + l.Length
				}
				c.Close()
				if err := s.Err(); err != nil {
					t.Fatal(err)
				}
				if end > o.Size || end < o.Size-2 {
					t.Errorf("%s: last line ends at %d, object has %d bytes", o.Key, end, o.Size)
				}
				lines += s.Lines()
			}
			if lines != tt.lines || oversize != tt.oversize {
				t.Errorf("%d lines (%d oversize), want %d (%d oversize)", lines, oversize, tt.lines, tt.oversize)
			}
			if longest < tt.minLongest || longest > tt.maxLongest {
				t.Errorf("longest line %d bytes, want within [%d, %d]", longest, tt.minLongest, tt.maxLongest)
			}
			t.Logf("%d objects, %d lines, longest %d bytes", len(objs), lines, longest)
		})
	}
}
