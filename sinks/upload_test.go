package sinks

import (
	"context"
	"encoding/binary"
	"io"
	"runtime"
	"testing"

	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/memblob"
)

func TestUploadBufferFor(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want int
	}{
		{0, 256 << 10},
		{1, 256 << 10},
		{256 << 10, 256 << 10},
		{256<<10 + 1, 512 << 10},
		{3<<20 + 1, 3<<20 + 256<<10},
		{4<<20 - 1, 4 << 20},
		{4 << 20, 4 << 20},
		{1 << 30, 4 << 20},
	} {
		if got := uploadBufferFor(tc.n); got != tc.want {
			t.Errorf("uploadBufferFor(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestPartOpensObjectOnWriteOut: a part opens its object (and with it, on Cloud Storage, an upload buffer) only
// when it writes out a row group, so that a table whose rows all fit in one row group holds no buffer until it
// closes.
func TestPartOpensObjectOnWriteOut(t *testing.T) {
	mem := checkedAllocator(t)
	b := memblob.OpenBucket(nil)
	defer b.Close()
	ctx := context.Background()
	small := NewTable(b, "out", "Patient", testSchema(), ParquetOptions{Allocator: mem})
	large := NewTable(b, "out", "Observation", testSchema(), ParquetOptions{Allocator: mem, RowGroupRows: 100})
	for _, tbl := range []*Table{small, large} {
		for start := 0; start < 300; start += 150 {
			rec := testRecord(t, mem, start, 150)
			err := tbl.Write(ctx, rec)
			rec.Release()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	opened := func(tbl *Table) (n int) {
		tbl.mu.Lock()
		defer tbl.mu.Unlock()
		for _, p := range tbl.idle {
			if p.obj != nil {
				n++
			}
		}
		return n
	}
	if n := opened(small); n != 0 {
		t.Errorf("a table that has not written out a row group has %d objects open", n)
	}
	if n := opened(large); n == 0 {
		t.Error("a table that has written out row groups has no object open")
	}
	if got := keys(t, b); len(got) != 0 {
		t.Errorf("objects committed before Close: %v", got)
	}
	for _, tbl := range []*Table{small, large} {
		files, err := tbl.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var rows int64
		for _, f := range files {
			rows += f.Rows
			var read int64
			for _, n := range readParquet(t, b, ObjectKey("out", f.Key), mem).rowGroups {
				read += n
			}
			if read != f.Rows {
				t.Errorf("%s: %d rows read back, the Table says %d", f.Key, read, f.Rows)
			}
		}
		if rows != 300 {
			t.Errorf("%s: %d rows in %d parts, want 300", tbl.typ, rows, len(files))
		}
	}
}

// TestManySmallTablesOnGCS: tables that each hold a few rows, written to Cloud Storage through gcsblob, do not each
// allocate a full upload buffer. With 4 MiB per open part, the 24 tables here allocated 96 MiB; an upload buffer
// fitted to each small file is 256 KiB.
func TestManySmallTablesOnGCS(t *testing.T) {
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, Writer: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: "lake"})
	ctx := context.Background()
	b, err := gcsblob.OpenBucket(ctx, nil, "lake", &gcsblob.Options{Client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	types := []string{"Account", "AllergyIntolerance", "Appointment", "Basic", "Binary", "CarePlan", "CareTeam",
		"Claim", "Condition", "Consent", "Coverage", "Device", "DiagnosticReport", "DocumentReference", "Encounter",
		"Goal", "Group", "Immunization", "Location", "Medication", "Observation", "Organization", "Patient",
		"Procedure"}
	mem := memory.NewGoAllocator()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var tables []*Table
	for i, typ := range types {
		tbl := NewTable(b, "out", typ, testSchema(), ParquetOptions{Allocator: mem})
		rec := testRecord(t, mem, i*20, 20)
		err := tbl.Write(ctx, rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
		tables = append(tables, tbl)
	}
	for _, tbl := range tables {
		files, err := tbl.Close(ctx)
		if err != nil || len(files) != 1 || files[0].Rows != 20 {
			t.Fatalf("%s: Close: %+v, %v; want one part of 20 rows", tbl.typ, files, err)
		}
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d tables allocated %.1f MiB", len(types), float64(alloc)/(1<<20))
	if limit := uint64(len(types)) << 20; alloc > limit {
		t.Errorf("%d small tables allocated %.1f MiB, more than 1 MiB each", len(types), float64(alloc)/(1<<20))
	}
	if got := keys(t, b); len(got) != len(types) {
		t.Errorf("%d objects in the bucket, want %d", len(got), len(types))
	}
}

// TestFooterBytes: the footer estimate that sizes the upload buffer of a part written out whole is close to the
// footer written (testSchema is narrow, so the key-value metadata is most of it).
func TestFooterBytes(t *testing.T) {
	mem := checkedAllocator(t)
	tbl := tableAfter(t, mem, 50, 0)
	tbl.mu.Lock()
	estimate := tbl.layout.footerBytes(1)
	tbl.mu.Unlock()
	files, err := tbl.Close(context.Background())
	if err != nil || len(files) != 1 {
		t.Fatalf("Close: %+v, %v", files, err)
	}
	data, err := tbl.b.ReadAll(context.Background(), ObjectKey("out", files[0].Key))
	if err != nil {
		t.Fatal(err)
	}
	footer := int64(binary.LittleEndian.Uint32(data[len(data)-8:]))
	if estimate < footer/2 || estimate > 2*footer {
		t.Errorf("footer estimate %d bytes, footer %d", estimate, footer)
	}
}

func TestPartUploadCap(t *testing.T) {
	for _, tc := range []struct{ openParts, want int }{
		{0, 4 << 20}, {1, 4 << 20}, {2, 2 << 20}, {3, 1<<20 + 256<<10}, {4, 1 << 20}, {16, 1 << 20},
	} {
		if got := partUploadCap(tc.openParts); got != tc.want {
			t.Errorf("partUploadCap(%d) = %d, want %d", tc.openParts, got, tc.want)
		}
	}
}
