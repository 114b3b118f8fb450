package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"gocloud.dev/blob/gcsblob"
)

// TestBenchChild runs one measurement in-process on the embedded sample, repeated twice, and checks that it
// converted the sample twice over.
func TestBenchChild(t *testing.T) {
	var lines, size int64
	err := eachSampleFile(func(_ string, data []byte) error {
		size += int64(len(data))
		for _, l := range bytes.Split(data, []byte("\n")) {
			if len(bytes.TrimSpace(l)) > 0 {
				lines++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The sample and a local output: no gs:// bucket to open.
	r := runBenchChild(t, nil, "--repeat", "2")
	if r.Validator != "fast" || r.Lines != 2*lines || r.Bytes != 2*size || r.Rows != r.Valid || r.Valid == 0 {
		t.Errorf("result %+v; want fast, %d lines, %d bytes, rows = valid", r, 2*lines, 2*size)
	}
	if r.Wall <= 0 || r.Validate <= 0 || r.Build <= 0 || r.Write <= 0 {
		t.Errorf("phase timings missing: %+v", r)
	}
	// A run allocates at least what it read, since every table's pages are fresh memory for the first rows.
	if r.Alloc < r.Bytes || r.GCCycles < 0 || r.GCCPU < 0 {
		t.Errorf("runtime counts: %d bytes allocated for %d bytes read, %d collections taking %.3f s",
			r.Alloc, r.Bytes, r.GCCycles, r.GCCPU)
	}
}

// runBenchChild runs one fast measurement of the embedded sample in-process, with args added to the child's, and
// returns what it reports.
func runBenchChild(t *testing.T, openGCS openGCSFunc, args ...string) benchResult {
	t.Helper()
	c, err := parseBenchConfig(append([]string{"--validators", "fast", "--child"}, args...), func(string) string { return "" },
		&bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := benchChild(context.Background(), c, openGCS, &out); err != nil {
		t.Fatal(err)
	}
	var r benchResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("child output %q: %v", out.String(), err)
	}
	return r
}

func TestBenchConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "defaults", args: nil},
		{name: "bad repeat", args: []string{"--repeat", "0"}, wantErr: "--repeat"},
		{name: "bad validator", args: []string{"--validators", "fast,quick"}, wantErr: "quick"},
		{name: "bad cores", args: []string{"--cores", "1,x"}, wantErr: "--cores"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseBenchConfig(tt.args, func(string) string { return "" }, &bytes.Buffer{})
			if tt.wantErr == "" {
				if err != nil || len(c.Validators) != 2 || len(c.Cores) == 0 || c.Repeat != 1 || !strings.Contains(c.Memory, "memory limit") {
					t.Errorf("config %+v, err %v", c, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}

// TestPrintBench checks the ratios printed from measurements.
func TestPrintBench(t *testing.T) {
	rs := []benchResult{
		{Validator: "reference", Cores: 1, Bytes: 100e6, Lines: 1000, Wall: 40, CPU: 40},
		{Validator: "fast", Cores: 1, Bytes: 100e6, Lines: 1000, Wall: 4, CPU: 4},
		{Validator: "fast", Cores: 2, Bytes: 100e6, Lines: 1000, Wall: 2.5, CPU: 5},
	}
	var out bytes.Buffer
	if err := printBench(&out, rs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fast / reference on 1 cores: 10.0×", "fast on 2 cores / on 1 core: 1.60×"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBenchChildOut: with --out gs://, a measurement writes its tables under a prefix of its own in the bucket
// (through the storage client the worker uses, so that its upload buffers are measured) and removes them after;
// what else the bucket holds stays.
func TestBenchChildOut(t *testing.T) {
	g := newConvertGCS(t)
	ctx := context.Background()
	b, err := gcsblob.OpenBucket(ctx, nil, convertOutBucket, &gcsblob.Options{Client: g.openClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WriteAll(ctx, "bench/keep.txt", []byte("not the bench's"), nil); err != nil {
		t.Fatal(err)
	}
	if r := runBenchChild(t, g.openGCS(t), "--out", "gs://"+convertOutBucket+"/bench/"); r.Rows == 0 {
		t.Errorf("result %+v: no rows", r)
	}
	var uploads int
	for _, req := range g.proxy.requests() {
		if req.Op == "write" && strings.Contains(req.Object, "bench/fhirlake-bench-fast-") {
			uploads++
		}
	}
	if uploads == 0 {
		t.Errorf("no upload under gs://%s/bench/fhirlake-bench-fast-*: %+v", convertOutBucket, g.proxy.requests())
	}
	if left := bucketKeys(t, b, "bench/"); !slices.Equal(left, []string{"bench/keep.txt"}) {
		t.Errorf("left under bench/: %v; want only bench/keep.txt", left)
	}
}

// TestBenchChildOutLocal: --out to a directory, as a path or a file:// URL (which must exist, as for convert),
// writes under a directory of the measurement's own, which is removed after; the directory given stays.
func TestBenchChildOutLocal(t *testing.T) {
	for _, scheme := range []string{"", "file://"} {
		t.Run("scheme="+scheme, func(t *testing.T) {
			dir := t.TempDir()
			if r := runBenchChild(t, nil, "--out", scheme+dir); r.Rows == 0 {
				t.Errorf("result %+v: no rows", r)
			}
			left, err := os.ReadDir(dir)
			if err != nil || len(left) != 0 {
				t.Errorf("left in %s: %v, %v; want nothing", dir, left, err)
			}
		})
	}
}
