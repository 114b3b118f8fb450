package sinks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
)

// testSchema is a small resource-like schema: scalars, a list of structs holding a list, a struct with a
// timestamp, and the metadata the schema package puts on every resource schema.
func testSchema() *arrow.Schema {
	name := arrow.StructOf(
		arrow.Field{Name: "family", Type: arrow.BinaryTypes.String, Nullable: true},
		arrow.Field{Name: "given", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
	)
	meta := arrow.StructOf(
		arrow.Field{Name: "lastUpdated", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, Nullable: true},
	)
	md := arrow.NewMetadata(
		[]string{"fhirlake.schema_version", "fhir.version", "fhir.resource_type"},
		[]string{"1", "4.0.1", "Patient"},
	)
	return arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "active", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
		{Name: "count", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "name", Type: arrow.ListOf(name), Nullable: true},
		{Name: "meta", Type: meta, Nullable: true},
	}, &md)
}

// testRecord builds rows start..start+n-1 of a deterministic data set: row i has id "p-<i>".
func testRecord(t testing.TB, mem memory.Allocator, start, n int) arrow.Record {
	t.Helper()
	rb := array.NewRecordBuilder(mem, testSchema())
	defer rb.Release()
	id := rb.Field(0).(*array.StringBuilder)
	active := rb.Field(1).(*array.BooleanBuilder)
	count := rb.Field(2).(*array.Int64Builder)
	names := rb.Field(3).(*array.ListBuilder)
	name := names.ValueBuilder().(*array.StructBuilder)
	family := name.FieldBuilder(0).(*array.StringBuilder)
	given := name.FieldBuilder(1).(*array.ListBuilder)
	givenValue := given.ValueBuilder().(*array.StringBuilder)
	meta := rb.Field(4).(*array.StructBuilder)
	lastUpdated := meta.FieldBuilder(0).(*array.TimestampBuilder)
	for i := start; i < start+n; i++ {
		id.Append(fmt.Sprintf("p-%d", i))
		if i%3 == 0 {
			active.AppendNull()
		} else {
			active.Append(i%2 == 0)
		}
		count.Append(int64(i))
		names.Append(true)
		for j := 0; j < i%3; j++ { // 0, 1 or 2 names
			name.Append(true)
			family.Append(fmt.Sprintf("F%d-%d", i, j))
			given.Append(true)
			givenValue.Append("a")
			givenValue.Append(fmt.Sprintf("b%d", i))
		}
		if i%4 == 0 {
			meta.AppendNull()
		} else {
			meta.Append(true)
			lastUpdated.Append(arrow.Timestamp(int64(i) * 1_000_000))
		}
	}
	return rb.NewRecord()
}

// readPart is what a Parquet part holds.
type readPart struct {
	rowGroups []int64
	codec     compress.Compression
	kv        map[string]string
	records   []arrow.Record // the rows, released by t.Cleanup
}

// readParquet reads key back with the parquet file reader and pqarrow.
func readParquet(t *testing.T, b *blob.Bucket, key string, mem memory.Allocator) readPart {
	t.Helper()
	ctx := context.Background()
	data, err := b.ReadAll(ctx, key)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	pf, err := file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		t.Fatalf("open parquet %s: %v", key, err)
	}
	defer pf.Close()
	var got readPart
	for i := 0; i < pf.NumRowGroups(); i++ {
		got.rowGroups = append(got.rowGroups, pf.MetaData().RowGroup(i).NumRows())
	}
	if pf.NumRowGroups() > 0 {
		cc, err := pf.MetaData().RowGroup(0).ColumnChunk(0)
		if err != nil {
			t.Fatalf("column chunk of %s: %v", key, err)
		}
		got.codec = cc.Compression()
	}
	got.kv = map[string]string{}
	kv := pf.MetaData().KeyValueMetadata()
	for i, k := range kv.Keys() {
		got.kv[k] = kv.Values()[i]
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1 << 20}, mem)
	if err != nil {
		t.Fatalf("arrow reader for %s: %v", key, err)
	}
	tbl, err := fr.ReadTable(ctx)
	if err != nil {
		t.Fatalf("read table %s: %v", key, err)
	}
	defer tbl.Release()
	tr := array.NewTableReader(tbl, 1<<20)
	defer tr.Release()
	for tr.Next() {
		rec := tr.Record()
		rec.Retain()
		got.records = append(got.records, rec)
	}
	if err := tr.Err(); err != nil {
		t.Fatalf("iterate %s: %v", key, err)
	}
	t.Cleanup(func() {
		for _, r := range got.records {
			r.Release()
		}
	})
	return got
}

// keys lists every object in b.
func keys(t *testing.T, b *blob.Bucket) []string {
	t.Helper()
	var out []string
	it := b.List(nil)
	for {
		obj, err := it.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		out = append(out, obj.Key)
	}
}

func checkedAllocator(t *testing.T) *memory.CheckedAllocator {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return mem
}

func TestTableWritesParquet(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		opts    ParquetOptions
		batches []int
		// want, per part: the rows of each row group
		want      [][]int64
		wantCodec compress.Compression
	}{
		{
			name:      "one batch, defaults",
			out:       "run",
			batches:   []int{10},
			want:      [][]int64{{10}},
			wantCodec: compress.Codecs.Zstd,
		},
		{
			name:      "bucket root",
			out:       "",
			batches:   []int{3, 4},
			want:      [][]int64{{7}},
			wantCodec: compress.Codecs.Zstd,
		},
		{
			name:      "row groups split at RowGroupRows",
			out:       "run",
			opts:      ParquetOptions{RowGroupRows: 4},
			batches:   []int{5, 7, 3},
			want:      [][]int64{{4, 4, 4, 3}},
			wantCodec: compress.Codecs.Zstd,
		},
		{
			name:      "row group ends exactly at a batch boundary",
			out:       "run",
			opts:      ParquetOptions{RowGroupRows: 4},
			batches:   []int{4, 4},
			want:      [][]int64{{4, 4}},
			wantCodec: compress.Codecs.Zstd,
		},
		{
			name:      "a new part past MaxFileBytes",
			out:       "run",
			opts:      ParquetOptions{MaxFileBytes: 1},
			batches:   []int{3, 2, 4},
			want:      [][]int64{{3}, {2}, {4}},
			wantCodec: compress.Codecs.Zstd,
		},
		{
			name:      "explicit codec",
			out:       "run/",
			opts:      ParquetOptions{Compression: compress.Codecs.Snappy},
			batches:   []int{2},
			want:      [][]int64{{2}},
			wantCodec: compress.Codecs.Snappy,
		},
		{
			name:    "empty batches write nothing",
			out:     "run",
			batches: []int{0, 0},
			want:    nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			mem := checkedAllocator(t)
			b := memblob.OpenBucket(nil)
			defer b.Close()
			opts := tc.opts
			opts.Allocator = mem
			tbl := NewTable(b, tc.out, "Patient", testSchema(), opts)
			start := 0
			for _, n := range tc.batches {
				rec := testRecord(t, mem, start, n)
				err := tbl.Write(ctx, rec)
				rec.Release()
				if err != nil {
					t.Fatalf("Write: %v", err)
				}
				start += n
			}
			files, err := tbl.Close(ctx)
			if err != nil {
				t.Fatalf("Close: %v", err)
			}

			var wantFiles []string
			var wantKeys []string
			for i := range tc.want {
				rel := fmt.Sprintf("Patient/part-%05d.parquet", i)
				wantFiles = append(wantFiles, rel)
				wantKeys = append(wantKeys, ObjectKey(tc.out, rel))
			}
			var gotFiles []string
			for _, f := range files {
				gotFiles = append(gotFiles, f.Key)
			}
			if !slices.Equal(gotFiles, wantFiles) {
				t.Fatalf("files = %q, want %q", gotFiles, wantFiles)
			}
			if got := keys(t, b); !slices.Equal(got, wantKeys) {
				t.Fatalf("bucket holds %q, want %q", got, wantKeys)
			}

			row := 0
			for i, f := range files {
				attrs, err := b.Attributes(ctx, wantKeys[i])
				if err != nil {
					t.Fatal(err)
				}
				if f.Bytes != attrs.Size {
					t.Errorf("%s: File.Bytes = %d, object size %d", f.Key, f.Bytes, attrs.Size)
				}
				if attrs.ContentType != parquetType {
					t.Errorf("%s: content type %q", f.Key, attrs.ContentType)
				}
				got := readParquet(t, b, wantKeys[i], mem)
				if !slices.Equal(got.rowGroups, tc.want[i]) {
					t.Errorf("%s: row groups %v, want %v", f.Key, got.rowGroups, tc.want[i])
				}
				if got.codec != tc.wantCodec {
					t.Errorf("%s: codec %v, want %v", f.Key, got.codec, tc.wantCodec)
				}
				for _, k := range []string{"fhirlake.schema_version", "fhir.version", "fhir.resource_type"} {
					want, _ := testSchema().Metadata().GetValue(k)
					if got.kv[k] != want {
						t.Errorf("%s: metadata %s = %q, want %q", f.Key, k, got.kv[k], want)
					}
				}
				if got.kv["ARROW:schema"] == "" {
					t.Errorf("%s: no ARROW:schema in the footer", f.Key)
				}
				var rows int64
				for _, rec := range got.records {
					want := testRecord(t, mem, row, int(rec.NumRows()))
					if !array.RecordEqual(rec, want) {
						t.Errorf("%s: rows %d..%d differ:\n got %v\nwant %v", f.Key, row, row+int(rec.NumRows()), rec, want)
					}
					if !arrow.TypeEqual(rec.Schema().Field(4).Type, testSchema().Field(4).Type) {
						t.Errorf("%s: meta read back as %v", f.Key, rec.Schema().Field(4))
					}
					want.Release()
					row += int(rec.NumRows())
					rows += rec.NumRows()
				}
				if rows != f.Rows {
					t.Errorf("%s: File.Rows = %d, file has %d", f.Key, f.Rows, rows)
				}
			}
			if row != start {
				t.Errorf("read back %d rows, wrote %d", row, start)
			}
		})
	}
}

// A string column of incompressible values, so that pages flush and compressed bytes grow.
func TestTableRowGroupBytes(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	b := memblob.OpenBucket(nil)
	defer b.Close()
	s := arrow.NewSchema([]arrow.Field{{Name: "text", Type: arrow.BinaryTypes.String}}, nil)
	tbl := NewTable(b, "out", "Binary", s, ParquetOptions{RowGroupBytes: 256 << 10, Allocator: mem})
	rnd := uint64(1)
	const batches, rows = 40, 100
	for range batches {
		sb := array.NewStringBuilder(mem)
		for range rows {
			var v strings.Builder
			for range 64 { // 1 KiB of pseudo-random hex
				rnd = rnd*6364136223846793005 + 1442695040888963407
				fmt.Fprintf(&v, "%016x", rnd)
			}
			sb.Append(v.String())
		}
		col := sb.NewArray()
		sb.Release()
		rec := array.NewRecord(s, []arrow.Array{col}, rows)
		col.Release()
		err := tbl.Write(ctx, rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
	files, err := tbl.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Rows != batches*rows {
		t.Fatalf("files = %+v, want one part of %d rows", files, batches*rows)
	}
	data, err := b.ReadAll(ctx, "out/"+files[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := file.NewParquetReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	// About 4 MB of text, 2 MB compressed: more than one row group, far below 64Ki rows each. (The measure
	// leaves out the dictionary and the open page, up to 1 MiB each, so not 8 groups of 256 KiB.)
	if n := pf.NumRowGroups(); n < 2 {
		t.Errorf("%d row groups, want several split by size", n)
	}
}

// heldAfter returns what a Table holds after writing, without a budget, records of rows rows starting at each
// of starts: its open row group, as the budget counts it.
func heldAfter(t *testing.T, mem memory.Allocator, rows int, starts ...int) int64 {
	tbl := tableAfter(t, mem, rows, starts...)
	tbl.mu.Lock()
	defer tbl.mu.Unlock()
	if tbl.held <= 0 {
		t.Fatalf("a table with an open row group holds %d bytes", tbl.held)
	}
	return tbl.held
}

// tableAfter returns a Patient Table, without a budget, after writing records of rows rows starting at each of
// starts. The test aborts it when it ends.
func tableAfter(t *testing.T, mem memory.Allocator, rows int, starts ...int) *Table {
	b := memblob.OpenBucket(nil)
	t.Cleanup(func() { b.Close() })
	tbl := NewTable(b, "out", "Patient", testSchema(), ParquetOptions{Allocator: mem})
	t.Cleanup(tbl.Abort)
	for _, s := range starts {
		rec := testRecord(t, mem, s, rows)
		err := tbl.Write(context.Background(), rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
	return tbl
}

// TestHeldCountsCapacity: what a row group holds, as the budget counts it, is the memory of its buffers with the
// room they keep to grow, not only the bytes in them. A page's buffers stay with its leaf after the page is
// written, and appending grows a buffer to twice what it needs.
func TestHeldCountsCapacity(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	tbl := tableAfter(t, mem, 300, 0, 300, 600)
	tbl.mu.Lock()
	defer tbl.mu.Unlock()
	if len(tbl.idle) != 1 {
		t.Fatalf("%d idle parts, want the one open part", len(tbl.idle))
	}
	cw := tbl.idle[0].cw
	var used, room int64 // used: pages by length, dictionaries with their room; room: that of the pages
	for _, sl := range cw.leaves {
		lc := sl.lc
		if lc == nil {
			continue
		}
		used += int64(len(lc.data) + lc.pageMem() + lc.dict.mem())
		room += int64(cap(lc.data)-len(lc.data)) + int64(cap(lc.plain)-len(lc.plain)) + 4*int64(cap(lc.idx)-len(lc.idx))
	}
	if room == 0 {
		t.Fatalf("the buffers of the row group keep no room (%d bytes used): the test needs some", used)
	}
	if tbl.held != cw.held {
		t.Errorf("the table holds %d bytes, its one row group %d", tbl.held, cw.held)
	}
	if min := used + room; cw.held < min {
		t.Errorf("the row group counts %d bytes; its pages and dictionaries take %d (%d used, %d room)", cw.held, min, used, room)
	}
}

// TestTableBudget: tables sharing a MemoryBudget write their row groups early once the budget is exceeded, so
// what they hold together stays near it; without a budget the same writes make one row group per table.
func TestTableBudget(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	one := heldAfter(t, mem, 20, 0) // what one write of 20 rows holds
	tests := []struct {
		name       string
		budget     *MemoryBudget
		wantGroups func(n int) bool
	}{
		{"no budget", nil, func(n int) bool { return n == 1 }},
		{"a budget of about two writes", NewMemoryBudget(2*one, 0), func(n int) bool { return n >= 3 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := memblob.OpenBucket(nil)
			defer b.Close()
			opts := ParquetOptions{Budget: tc.budget, Allocator: mem}
			tables := []*Table{NewTable(b, "out", "Patient", testSchema(), opts), NewTable(b, "out", "Person", testSchema(), opts)}
			for i := range 12 {
				rec := testRecord(t, mem, i*20, 20)
				err := tables[i%2].Write(ctx, rec)
				rec.Release()
				if err != nil {
					t.Fatal(err)
				}
				if tc.budget != nil && tc.budget.Held() > tc.budget.limit+2*one {
					t.Errorf("after write %d the tables hold %d bytes, budget %d", i, tc.budget.Held(), tc.budget.limit)
				}
			}
			for _, tbl := range tables {
				if tc.budget == nil && tbl.Held() <= 0 {
					t.Errorf("%s holds %d bytes before Close, with its only row group open", tbl.typ, tbl.Held())
				}
				files, err := tbl.Close(ctx)
				if err != nil || len(files) != 1 || files[0].Rows != 120 {
					t.Fatalf("Close: %+v, %v; want one part of 120 rows", files, err)
				}
				if tbl.Held() != 0 {
					t.Errorf("%s holds %d bytes after Close", tbl.typ, tbl.Held())
				}
				got := readParquet(t, b, "out/"+files[0].Key, mem)
				if !tc.wantGroups(len(got.rowGroups)) {
					t.Errorf("%s: %d row groups %v", tbl.typ, len(got.rowGroups), got.rowGroups)
				}
			}
			if tc.budget != nil && tc.budget.Held() != 0 {
				t.Errorf("budget holds %d bytes after Close", tc.budget.Held())
			}
		})
	}
}

// TestTableBudgetRelief: a table that holds most of an exceeded budget gives it back when another table writes,
// though it gets no rows itself; the writing table, under its share, keeps its row group.
func TestTableBudgetRelief(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	big := heldAfter(t, mem, 20, 0, 20, 40, 60) // Patient after 4 writes
	small := heldAfter(t, mem, 20, 1000)        // Person after 1
	if small >= big {
		t.Fatalf("one write holds %d bytes, four %d", small, big)
	}
	budget := NewMemoryBudget(big+small-1, 0) // exceeded only by both
	b := memblob.OpenBucket(nil)
	defer b.Close()
	opts := ParquetOptions{Budget: budget, Allocator: mem}
	a, p := patientAndPerson(b, opts)
	write := func(tbl *Table, start int) { t.Helper(); write20(t, tbl, mem, start) }
	for _, s := range []int{0, 20, 40, 60} {
		write(a, s)
	}
	if got := budget.Held(); got != big {
		t.Fatalf("after four writes the budget holds %d bytes, want %d", got, big)
	}
	write(p, 1000)
	if h := a.heldNow.Load(); h != 0 {
		t.Errorf("Patient still holds %d bytes: not relieved", h)
	}
	if got := budget.Held(); got != small {
		t.Errorf("budget holds %d bytes after the relief, want Person's %d", got, small)
	}
	write(a, 80)
	want := map[*Table][]int64{a: {80, 20}, p: {20}}
	for _, tbl := range []*Table{a, p} {
		files, err := tbl.Close(ctx)
		if err != nil || len(files) != 1 {
			t.Fatalf("Close %s: %+v, %v", tbl.typ, files, err)
		}
		got := readParquet(t, b, "out/"+files[0].Key, mem)
		if !slices.Equal(got.rowGroups, want[tbl]) {
			t.Errorf("%s: row groups %v, want %v", tbl.typ, got.rowGroups, want[tbl])
		}
	}
}

// patientAndPerson returns a Patient and a Person table of testSchema writing into b with opts.
// TestTableBudgetGivesWay writes 8 records of 20 rows into a table whose budget holds all of them, while the
// last collection found the live heap under, over and far over the budget's target.
func TestTableBudgetGivesWay(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	one := heldAfter(t, mem, 20, 0)
	const target = 1 << 30
	for _, tc := range []struct {
		name      string
		live      int64
		excess    int64
		rowGroups []int64
	}{
		{"under the target", target - 1, 0, []int64{160}},
		{"over the target by two writes' worth", target + 2*one, 2 * one, []int64{100, 60}}, // limit 10 - 3×2 writes
		{"far over the target", 2 * target, target, []int64{60, 60, 40}},                    // a quarter: 2.5
	} {
		t.Run(tc.name, func(t *testing.T) {
			budget := NewMemoryBudget(10*one, 0)
			budget.GiveWay(target)
			budget.liveHeap = func() int64 { return tc.live }
			if got := budget.Excess(); got != tc.excess {
				t.Errorf("Excess() = %d, want %d", got, tc.excess)
			}
			b := memblob.OpenBucket(nil)
			defer b.Close()
			tbl := NewTable(b, "out", "Patient", testSchema(), ParquetOptions{Budget: budget, Allocator: mem})
			for i := range 8 {
				write20(t, tbl, mem, 20*i)
			}
			files, err := tbl.Close(ctx)
			if err != nil || len(files) != 1 {
				t.Fatalf("Close: %+v, %v", files, err)
			}
			got := readParquet(t, b, "out/"+files[0].Key, mem)
			if !slices.Equal(got.rowGroups, tc.rowGroups) {
				t.Errorf("row groups %v, want %v", got.rowGroups, tc.rowGroups)
			}
		})
	}
	var none *MemoryBudget
	if got := none.Excess(); got != 0 {
		t.Errorf("Excess() of no budget = %d", got)
	}
	if got := NewMemoryBudget(one, 0).Excess(); got != 0 {
		t.Errorf("Excess() of a budget without a target = %d", got)
	}
}

func patientAndPerson(b *blob.Bucket, opts ParquetOptions) (*Table, *Table) {
	return NewTable(b, "out", "Patient", testSchema(), opts), NewTable(b, "out", "Person", testSchema(), opts)
}

// write20 writes the 20 rows of testRecord from start to tbl.
func write20(t *testing.T, tbl *Table, mem memory.Allocator, start int) {
	t.Helper()
	rec := testRecord(t, mem, start, 20)
	defer rec.Release()
	if err := tbl.Write(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// testLayoutMem returns what the layout of testSchema holds, as a budget counts it.
func testLayoutMem(t *testing.T) int64 {
	t.Helper()
	l, err := newTableLayout(testSchema(), parquet.NewWriterProperties())
	if err != nil {
		t.Fatal(err)
	}
	if l.mem <= 0 {
		t.Fatalf("a layout of %d leaves holds %d bytes", len(l.leaves), l.mem)
	}
	return l.mem
}

// TestTableLetsGoOfLayout: when the layouts of the tables sharing a budget exceed its layout limit, a table not
// being written to (a type whose rows have ended, in a run of many) writes out its row group and lets go of its
// layout's leaves and chunk writers, and the budget stops counting them; the table being written keeps its own. A
// later Write builds them again, into the same part, and the parts read back whole.
func TestTableLetsGoOfLayout(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	lm := testLayoutMem(t)
	budget := NewMemoryBudget(1<<30, lm+lm/2) // room for one layout
	b := memblob.OpenBucket(nil)
	defer b.Close()
	opts := ParquetOptions{Budget: budget, Allocator: mem}
	a, p := patientAndPerson(b, opts)
	write := func(tbl *Table, start int) { t.Helper(); write20(t, tbl, mem, start) }
	check := func(when string, tbl *Table, wantLayout bool) {
		t.Helper()
		tbl.mu.Lock()
		layout, cw := tbl.layout != nil && tbl.layout.leaves != nil, len(tbl.idle) == 1 && tbl.idle[0].cw != nil
		tbl.mu.Unlock()
		if layout != wantLayout || cw != wantLayout || (tbl.Held() > 0) != wantLayout {
			t.Fatalf("%s: %s keeps layout %v, chunk writer %v, %d bytes of rows; want all or none (%v)", when,
				tbl.typ, layout, cw, tbl.Held(), wantLayout)
		}
	}
	write(a, 0)
	check("Patient written", a, true)
	if got := budget.Laid(); got != lm {
		t.Fatalf("the budget counts %d bytes of layouts, want Patient's %d", got, lm)
	}
	write(p, 100) // two layouts: Patient retires
	check("Person written", a, false)
	check("Person written", p, true)
	if got := budget.Laid(); got != lm {
		t.Errorf("the budget counts %d bytes of layouts, want Person's %d", got, lm)
	}
	write(a, 20) // Patient again, into the same part: now Person retires
	check("Patient written again", a, true)
	check("Patient written again", p, false)

	for _, tc := range []struct {
		tbl    *Table
		groups []int64
		starts []int
	}{{a, []int64{20, 20}, []int{0, 20}}, {p, []int64{20}, []int{100}}} {
		files, err := tc.tbl.Close(ctx) // Person's footer from what its layout kept for it
		if err != nil || len(files) != 1 || files[0].Rows != int64(20*len(tc.starts)) {
			t.Fatalf("Close %s: %+v, %v; want one part", tc.tbl.typ, files, err)
		}
		got := readParquet(t, b, "out/"+files[0].Key, mem)
		if !slices.Equal(got.rowGroups, tc.groups) {
			t.Errorf("%s: row groups %v, want %v", tc.tbl.typ, got.rowGroups, tc.groups)
		}
		var ids, want []string
		for _, rec := range got.records {
			col := rec.Column(0).(*array.String)
			for i := range col.Len() {
				ids = append(ids, col.Value(i))
			}
		}
		for _, start := range tc.starts {
			rec := testRecord(t, mem, start, 20)
			col := rec.Column(0).(*array.String)
			for i := range col.Len() {
				want = append(want, col.Value(i))
			}
			rec.Release()
		}
		if !slices.Equal(ids, want) {
			t.Errorf("%s: ids read back %v, want %v", tc.tbl.typ, ids, want)
		}
	}
	if budget.Held() != 0 || budget.Laid() != 0 {
		t.Errorf("after Close the budget holds %d bytes of rows and %d of layouts", budget.Held(), budget.Laid())
	}
}

// TestRelievePassesOverBusyTable: a table that another Write is encoding into cannot retire; relieving the
// layouts passes over it to the next, rather than giving up.
func TestRelievePassesOverBusyTable(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	lm := testLayoutMem(t)
	budget := NewMemoryBudget(1<<30, 2*lm+lm/2) // room for two layouts
	b := memblob.OpenBucket(nil)
	defer b.Close()
	opts := ParquetOptions{Budget: budget, Allocator: mem}
	busy, idle := patientAndPerson(b, opts)
	writer := NewTable(b, "out", "Group", testSchema(), opts)
	write20(t, busy, mem, 0)
	write20(t, idle, mem, 100)
	write20(t, idle, mem, 120) // more rows than busy: busy would be the retiree
	busy.mu.Lock()
	p, err := busy.take(ctx) // as a Write does before it encodes, without mu
	busy.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	write20(t, writer, mem, 200) // a third layout
	kept := func(tbl *Table) bool {
		tbl.mu.Lock()
		defer tbl.mu.Unlock()
		return tbl.layout != nil && tbl.layout.leaves != nil
	}
	if !kept(busy) || kept(idle) || !kept(writer) {
		t.Errorf("layouts kept: busy %v, idle %v, writer %v; want the idle table's let go of", kept(busy), kept(idle), kept(writer))
	}
	if got := budget.Laid(); got != 2*lm {
		t.Errorf("the budget counts %d bytes of layouts, want two of %d", got, lm)
	}
	busy.mu.Lock()
	err = busy.handBack(ctx, p)
	busy.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for tbl, rows := range map[*Table]int64{busy: 20, idle: 40, writer: 20} {
		files, err := tbl.Close(ctx)
		if err != nil || len(files) != 1 || files[0].Rows != rows {
			t.Errorf("Close %s: %+v, %v; want one part of %d rows", tbl.typ, files, err, rows)
		}
	}
}

// TestTableSmallTableOnePart: concurrent Writes to a table that has not had a row group's worth of rows share
// one part (each part repeats the footer), whatever MaxOpenParts allows.
func TestTableSmallTableOnePart(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	b := memblob.OpenBucket(nil)
	defer b.Close()
	tbl := NewTable(b, "out", "Patient", testSchema(), ParquetOptions{RowGroupRows: 1000, MaxOpenParts: 4, Allocator: mem})
	writeConcurrently(t, tbl, mem, 4, 10, 10)
	files, err := tbl.Close(ctx)
	if err != nil || len(files) != 1 || files[0].Rows != 400 {
		t.Fatalf("Close: %+v, %v; want one part of 400 rows", files, err)
	}
}

// TestClosedTableHoldsNothing: once closed, a Table keeps its list of files and none of its parts, row groups or
// layout, which a run would otherwise hold for every type until its last table is closed.
func TestClosedTableHoldsNothing(t *testing.T) {
	mem := checkedAllocator(t)
	tbl := tableAfter(t, mem, 300, 0, 300)
	files, err := tbl.Close(context.Background())
	if err != nil || len(files) != 1 || files[0].Rows != 600 {
		t.Fatalf("Close: %+v, %v; want one part of 600 rows", files, err)
	}
	tbl.mu.Lock()
	layout, idle, open := tbl.layout, cap(tbl.idle), tbl.open
	tbl.mu.Unlock()
	if layout != nil || idle != 0 || open != 0 {
		t.Errorf("a closed table keeps its layout (%v), %d idle part slots, %d open parts", layout != nil, idle, open)
	}
	if again, err := tbl.Close(context.Background()); err != nil || len(again) != 1 {
		t.Errorf("Close again: %+v, %v; want the same part", again, err)
	}
}

// writeConcurrently writes workers × batches records of rows rows to tbl from workers goroutines, each record with
// ids of its own.
func writeConcurrently(t *testing.T, tbl *Table, mem memory.Allocator, workers, batches, rows int) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				rec := testRecord(t, mem, (w*batches+i)*rows, rows)
				err := tbl.Write(ctx, rec)
				rec.Release()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestTableConcurrentWrites(t *testing.T) {
	for _, open := range []int{1, 3} {
		t.Run(fmt.Sprintf("MaxOpenParts %d", open), func(t *testing.T) { testTableConcurrentWrites(t, open) })
	}
}

func testTableConcurrentWrites(t *testing.T, maxOpen int) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	b := memblob.OpenBucket(nil)
	defer b.Close()
	tbl := NewTable(b, "out", "Patient", testSchema(), ParquetOptions{RowGroupRows: 64, MaxFileBytes: 16 << 10,
		MaxOpenParts: maxOpen, Allocator: mem})
	const workers, batches, rows = 4, 25, 10
	writeConcurrently(t, tbl, mem, workers, batches, rows)
	files, err := tbl.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Errorf("%d parts, want several past MaxFileBytes 16 KiB", len(files))
	}
	seen := map[string]bool{}
	var total int64
	if !slices.IsSortedFunc(files, func(a, b File) int { return strings.Compare(a.Key, b.Key) }) {
		t.Errorf("parts not in order: %v", files)
	}
	for _, f := range files {
		got := readParquet(t, b, "out/"+f.Key, mem)
		var partRows int64
		for _, rg := range got.rowGroups {
			partRows += rg
			if rg > 64 {
				t.Errorf("%s: row group of %d rows > 64", f.Key, rg)
			}
		}
		if partRows != f.Rows {
			t.Errorf("%s holds %d rows, Close says %d", f.Key, partRows, f.Rows)
		}
		for _, rec := range got.records {
			ids := rec.Column(0).(*array.String)
			for i := 0; i < ids.Len(); i++ {
				if seen[ids.Value(i)] {
					t.Errorf("id %s written twice", ids.Value(i))
				}
				seen[ids.Value(i)] = true
			}
			total += rec.NumRows()
		}
	}
	if want := int64(workers * batches * rows); total != int64(len(seen)) || total != want {
		t.Errorf("read %d rows, %d distinct ids, want %d", total, len(seen), want)
	}
}

func TestTableAbort(t *testing.T) {
	tests := []struct {
		name string
		// abort is how the table fails after two batches were written
		abort func(ctx context.Context, tbl *Table, rec arrow.Record) error
	}{
		{
			name: "Abort",
			abort: func(ctx context.Context, tbl *Table, rec arrow.Record) error {
				tbl.Abort()
				return nil
			},
		},
		{
			name: "context cancelled before Write",
			abort: func(ctx context.Context, tbl *Table, rec arrow.Record) error {
				ctx, cancel := context.WithCancel(ctx)
				cancel()
				return tbl.Write(ctx, rec)
			},
		},
		{
			name: "context cancelled before Close",
			abort: func(ctx context.Context, tbl *Table, rec arrow.Record) error {
				ctx, cancel := context.WithCancel(ctx)
				cancel()
				_, err := tbl.Close(ctx)
				return err
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			mem := checkedAllocator(t)
			b := memblob.OpenBucket(nil)
			defer b.Close()
			tbl := NewTable(b, "out", "Patient", testSchema(), ParquetOptions{RowGroupRows: 4, Allocator: mem})
			rec := testRecord(t, mem, 0, 6)
			defer rec.Release()
			for range 2 {
				if err := tbl.Write(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}
			if got := keys(t, b); len(got) != 0 {
				t.Fatalf("an open part is visible: %q", got)
			}
			if err := tc.abort(ctx, tbl, rec); tc.name != "Abort" && err == nil {
				t.Fatal("no error from a cancelled context")
			}
			if err := tbl.Write(ctx, rec); err == nil {
				t.Error("Write after the failure: no error")
			}
			if files, err := tbl.Close(ctx); err == nil {
				t.Errorf("Close after the failure: files %v, no error", files)
			}
			tbl.Abort() // again: harmless
			if got := keys(t, b); len(got) != 0 {
				t.Errorf("the failed table left %q", got)
			}
		})
	}
}

func TestTableRejectsWrongSchema(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	b := memblob.OpenBucket(nil)
	defer b.Close()
	other := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, nil)
	tbl := NewTable(b, "out", "Patient", other, ParquetOptions{Allocator: mem})
	rec := testRecord(t, mem, 0, 2)
	defer rec.Release()
	err := tbl.Write(ctx, rec)
	if err == nil || !strings.Contains(err.Error(), "schema") || strings.Contains(err.Error(), "p-1") {
		t.Errorf("Write with another schema: %v", err)
	}
	files, err := tbl.Close(ctx)
	if err != nil || len(files) != 0 {
		t.Errorf("Close = %v, %v; want no files", files, err)
	}
	if err := tbl.Write(ctx, rec); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

// TestTableTakesEqualSchema: a record of a schema equal to the table's, built apart from it (as schema.Registry
// builds a type again once nobody held it), is written, and the Table holds the newer schema from then on.
func TestTableTakesEqualSchema(t *testing.T) {
	ctx := context.Background()
	mem := checkedAllocator(t)
	b := memblob.OpenBucket(nil)
	defer b.Close()
	first := testSchema()
	tbl := NewTable(b, "out", "Patient", first, ParquetOptions{Allocator: mem})
	rec := testRecord(t, mem, 0, 2) // of another testSchema()
	defer rec.Release()
	if rec.Schema() == first {
		t.Fatal("testRecord's schema is the table's: the test needs an equal one built apart")
	}
	if err := tbl.Write(ctx, rec); err != nil {
		t.Fatalf("Write with an equal schema: %v", err)
	}
	if tbl.schema != rec.Schema() {
		t.Error("the Table still holds the schema it was made with")
	}
	files, err := tbl.Close(ctx)
	if err != nil || len(files) != 1 || files[0].Rows != 2 {
		t.Fatalf("Close = %+v, %v; want one part of 2 rows", files, err)
	}
}

// TestTableNames: a Table writes resource types and the patient-link table, and refuses any other name.
func TestTableNames(t *testing.T) {
	for _, tt := range []struct {
		name    string
		table   string
		wantKey string // "" when Write must fail
	}{
		{name: "resource type", table: "Patient", wantKey: "out/Patient/part-00000.parquet"},
		{name: "patient links", table: "_patient_links", wantKey: "out/_patient_links/part-00000.parquet"},
		{name: "other underscore name", table: "_rejects"},
		{name: "path", table: "a/b"},
		{name: "parent", table: "../Patient"},
		{name: "dot dot", table: ".."},
		{name: "escaping path", table: "Patient/../../x"},
		{name: "empty", table: ""},
		{name: "NUL", table: "Pa\x00tient"},
		{name: "newline", table: "Patient\n"},
		{name: "backslash", table: `Patient\..\x`},
		{name: "look-alike letter", table: "P\u0430tient"},
		{name: "leading digit", table: "1Patient"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			mem := checkedAllocator(t)
			b := memblob.OpenBucket(nil)
			defer b.Close()
			tbl := NewTable(b, "out", tt.table, testSchema(), ParquetOptions{Allocator: mem})
			rec := testRecord(t, mem, 0, 2)
			defer rec.Release()
			err := tbl.Write(ctx, rec)
			if tt.wantKey == "" {
				if err == nil {
					t.Fatalf("Write to table %q succeeded", tt.table)
				}
				tbl.Abort()
				if k := keys(t, b); len(k) != 0 {
					t.Errorf("table %q wrote %v", tt.table, k)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			files, err := tbl.Close(ctx)
			if err != nil || len(files) != 1 {
				t.Fatalf("Close = %v, %v", files, err)
			}
			if ok, err := b.Exists(ctx, tt.wantKey); err != nil || !ok {
				t.Errorf("%s not written (%v)", tt.wantKey, err)
			}
		})
	}
}
