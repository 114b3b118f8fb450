package pipeline

import (
	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"

	"github.com/fhirlake/fhirlake/schema"
	"github.com/fhirlake/fhirlake/transform"
)

// linkBuilder collects a decoder's rows of the patient-link table (schema.Links). Not safe for concurrent use.
type linkBuilder struct {
	rb       *array.RecordBuilder
	patient  *array.StringBuilder
	typ      *array.StringBuilder
	id       *array.StringBuilder
	version  *array.StringBuilder
	position *array.Int64Builder
	source   *array.StringBuilder
	line     *array.Int64Builder
	rows     int
}

func newLinkBuilder(mem memory.Allocator) *linkBuilder {
	rb := array.NewRecordBuilder(mem, schema.Links())
	return &linkBuilder{
		rb:       rb,
		patient:  rb.Field(0).(*array.StringBuilder),
		typ:      rb.Field(1).(*array.StringBuilder),
		id:       rb.Field(2).(*array.StringBuilder),
		version:  rb.Field(3).(*array.StringBuilder),
		position: rb.Field(4).(*array.Int64Builder),
		source:   rb.Field(5).(*array.StringBuilder),
		line:     rb.Field(6).(*array.Int64Builder),
	}
}

// add appends the link of one valid resource of a block.
func (b *linkBuilder) add(patient string, res transform.Result, position int64, source string, line int64) {
	b.patient.Append(patient)
	b.typ.Append(res.ResourceType)
	b.id.Append(res.ID)
	if res.Version == "" {
		b.version.AppendNull()
	} else {
		b.version.Append(res.Version)
	}
	b.position.Append(position)
	b.source.Append(source)
	b.line.Append(line)
	b.rows++
}

// record returns the pending rows and starts anew; the caller releases it.
func (b *linkBuilder) record() arrow.Record {
	b.rows = 0
	return b.rb.NewRecord()
}

func (b *linkBuilder) release() { b.rb.Release() }
