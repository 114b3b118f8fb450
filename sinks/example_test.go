package sinks_test

import (
	"context"
	"fmt"
	"log"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"gocloud.dev/blob/memblob"

	"github.com/fhirlake/fhirlake/sinks"
)

// A Table per resource type takes the records of every worker; Close commits the parts and tells the manifest
// what was written.
func ExampleTable() {
	ctx := context.Background()
	bucket := memblob.OpenBucket(nil)
	defer bucket.Close()

	md := arrow.NewMetadata([]string{"fhir.resource_type"}, []string{"Patient"})
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, &md)
	table := sinks.NewTable(bucket, "out", "Patient", schema, sinks.ParquetOptions{})

	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	b.Field(0).(*array.StringBuilder).AppendValues([]string{"a", "b", "c"}, nil)
	rec := b.NewRecord()
	defer rec.Release()

	if err := table.Write(ctx, rec); err != nil {
		table.Abort() // on any failure: nothing half-written is committed
		log.Fatal(err)
	}
	files, err := table.Close(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range files {
		fmt.Println(f.Key, f.Rows)
	}
	// Output: Patient/part-00000.parquet 3
}
