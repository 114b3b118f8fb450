package pipeline_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/fhirlake/fhirlake/schema"
	"github.com/fhirlake/fhirlake/sinks"
	"github.com/fhirlake/fhirlake/transform"
)

// TestParquetParity checks sinks.Table, which writes the Parquet leaf columns itself, against pqarrow's own
// writer: the records the transform builds from real resources, written both ways, must read back (through
// pqarrow) as equal tables, with the same Parquet schema. Small batches and row groups of 7 rows make row groups
// cut records in the middle. In -short only the excerpts in transform/testdata run; otherwise also the first lines
// of every type of ../shared/data/r4-examples (every R4 resource type with data) and of the per-Patient export.
func TestParquetParity(t *testing.T) {
	inputs := []string{
		"../transform/testdata/hl7-examples.ndjson",
		"../transform/testdata/synthea-excerpt.ndjson",
	}
	if !testing.Short() {
		for _, name := range []string{"r4-examples", "synthea-group-by-patient"} {
			dir := filepath.Join(sharedData, name)
			files, _ := filepath.Glob(filepath.Join(dir, "*.ndjson"))
			inputs = append(inputs, files...)
		}
	}
	reg, err := schema.New(schema.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mem := checked(t)
	w, err := transform.NewWorker(reg, transform.Options{BatchRows: 5, Allocator: mem, Validator: transform.ValidatorFast})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Release()
	recs := map[string][]arrow.Record{}
	defer func() {
		for _, rs := range recs {
			for _, r := range rs {
				r.Release()
			}
		}
	}()
	flush := func() {
		out, err := w.Flush(0)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range out {
			typ := r.Schema().Metadata().Values()[r.Schema().Metadata().FindKey(schema.MetaResourceType)]
			recs[typ] = append(recs[typ], r)
		}
	}
	for _, in := range inputs {
		f, err := os.Open(in)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 8<<20)
		for n := 0; n < maxParityLines && sc.Scan(); n++ {
			if _, err := w.Process(sc.Bytes()); err != nil {
				t.Fatalf("%s: %v", in, err)
			}
			if w.Full() {
				flush()
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	flush()
	if len(recs) < 10 {
		t.Fatalf("only %d types converted", len(recs))
	}
	ctx := context.Background()
	types := make([]string, 0, len(recs))
	for typ := range recs {
		types = append(types, typ)
	}
	slices.Sort(types)
	for _, typ := range types {
		t.Run(typ, func(t *testing.T) {
			rs := recs[typ]
			s := rs[0].Schema()
			b := memBucket(t)
			tbl := sinks.NewTable(b, "ours", typ, s, sinks.ParquetOptions{RowGroupRows: 7, Allocator: mem})
			for _, r := range rs {
				if err := tbl.Write(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			files, err := tbl.Close(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var ours []arrow.Table
			for _, f := range files {
				ours = append(ours, readTable(t, b, "ours/"+f.Key, mem))
			}
			var ref bytes.Buffer
			fw, err := pqarrow.NewFileWriter(s, &ref, parquet.NewWriterProperties(parquet.WithAllocator(mem)),
				pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema(), pqarrow.WithAllocator(mem)))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				if err := fw.Write(r); err != nil {
					t.Fatal(err)
				}
			}
			if err := fw.Close(); err != nil {
				t.Fatal(err)
			}
			want := readTableBytes(t, ref.Bytes(), mem)
			defer want.Release()
			got := concatTables(t, ours, mem)
			defer got.Release()
			if !got.Schema().Equal(want.Schema()) {
				t.Fatalf("schema read back differs:\nours %s\npqarrow %s", got.Schema(), want.Schema())
			}
			if got.NumRows() != want.NumRows() {
				t.Fatalf("%d rows, pqarrow's file has %d", got.NumRows(), want.NumRows())
			}
			for i := 0; i < int(want.NumCols()); i++ {
				if !array.ChunkedEqual(got.Column(i).Data(), want.Column(i).Data()) {
					t.Errorf("column %s differs from pqarrow's", want.Schema().Field(i).Name)
				}
			}
		})
	}
}

// maxParityLines bounds the lines read from one file: pqarrow's writer is slow on the widest types, and a few
// dozen resources of a type already cover its shapes.
const maxParityLines = 60

func readTable(t *testing.T, b *blob.Bucket, key string, mem memory.Allocator) arrow.Table {
	t.Helper()
	data, err := b.ReadAll(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return readTableBytes(t, data, mem)
}

func readTableBytes(t *testing.T, data []byte, mem memory.Allocator) arrow.Table {
	t.Helper()
	pf, err := file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{}, mem)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// concatTables joins the tables read from several parts into one of their chunks, releasing them.
func concatTables(t *testing.T, tbls []arrow.Table, mem memory.Allocator) arrow.Table {
	t.Helper()
	if len(tbls) == 0 {
		t.Fatal("no parts")
	}
	s := tbls[0].Schema()
	cols := make([]arrow.Column, s.NumFields())
	var rows int64
	for _, tb := range tbls {
		rows += tb.NumRows()
	}
	for i := range cols {
		var chunks []arrow.Array
		for _, tb := range tbls {
			chunks = append(chunks, tb.Column(i).Data().Chunks()...)
		}
		ch := arrow.NewChunked(s.Field(i).Type, chunks)
		cols[i] = *arrow.NewColumn(s.Field(i), ch)
		ch.Release()
	}
	out := array.NewTable(s, cols, rows)
	for i := range cols {
		cols[i].Release()
	}
	for _, tb := range tbls {
		tb.Release()
	}
	return out
}

// BenchmarkTableWrite measures the Parquet side alone, per resource type: the records the transform builds from
// synthea-100's file of that type (its first 4,000 lines), written through a sinks.Table into memory. MB/s are of
// the NDJSON the records came from.
//
//	go test ./pipeline -run '^$' -bench TableWrite
func BenchmarkTableWrite(b *testing.B) {
	reg, err := schema.New(schema.Options{})
	if err != nil {
		b.Fatal(err)
	}
	for _, typ := range []string{"Observation", "ExplanationOfBenefit", "Claim", "Encounter", "Patient"} {
		b.Run(typ, func(b *testing.B) {
			path := filepath.Join(sharedData, "synthea-100", typ+".ndjson")
			f, err := os.Open(path)
			if err != nil {
				b.Skipf("%s is absent", path)
			}
			defer f.Close()
			w, err := transform.NewWorker(reg, transform.Options{Validator: transform.ValidatorFast})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Release()
			var size int64
			var recs []arrow.Record
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 8<<20)
			for n := 0; n < 4000 && sc.Scan(); n++ {
				size += int64(len(sc.Bytes()) + 1)
				if _, err := w.Process(sc.Bytes()); err != nil {
					b.Fatal(err)
				}
				if w.Full() {
					out, err := w.Flush(0)
					if err != nil {
						b.Fatal(err)
					}
					recs = append(recs, out...)
				}
			}
			out, err := w.Flush(0)
			if err != nil {
				b.Fatal(err)
			}
			recs = append(recs, out...)
			defer func() {
				for _, r := range recs {
					r.Release()
				}
			}()
			ctx := context.Background()
			b.SetBytes(size)
			for b.Loop() {
				dst := memblob.OpenBucket(nil)
				tbl := sinks.NewTable(dst, "out", typ, recs[0].Schema(), sinks.ParquetOptions{})
				for _, r := range recs {
					if err := tbl.Write(ctx, r); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := tbl.Close(ctx); err != nil {
					b.Fatal(err)
				}
				dst.Close()
			}
		})
	}
}
