package schema

import "github.com/apache/arrow/go/v17/arrow"

// LinksTable is the name of the patient-link table: the directory of its part files under a run's output, and the
// value of its MetaTable metadata.
const LinksTable = "_patient_links"

// MetaTable names a table that is not a resource type's (the link table).
const MetaTable = "fhirlake.table"

// Link table columns, in order.
const (
	LinkPatientID    = "patient_id"
	LinkResourceType = "resource_type"
	LinkResourceID   = "resource_id"
	LinkVersion      = "resource_version"
	LinkPosition     = "position"
	LinkSource       = "source"
	LinkLine         = "line"
)

// Links returns the schema of the patient-link table of per-Patient exports: one row for every (block, resource)
// pair. (resource_type, resource_id, resource_version) identifies the resource's row in its type's table, where it
// is written once however many blocks hold it; patient_id is the id of the block's Patient; position is the
// resource's 0-based place in its block (the Patient opening a block is 0); source and line locate the line in
// the export. resource_version is meta.versionId, else meta.lastUpdated, and null when the resource has neither.
// The shape is fixed and versioned with Version.
func Links() *arrow.Schema {
	md := arrow.NewMetadata(
		[]string{MetaSchemaVersion, MetaFHIRVersion, MetaTable},
		[]string{Version, FHIRVersion, LinksTable},
	)
	return arrow.NewSchema([]arrow.Field{
		{Name: LinkPatientID, Type: arrow.BinaryTypes.String},
		{Name: LinkResourceType, Type: arrow.BinaryTypes.String},
		{Name: LinkResourceID, Type: arrow.BinaryTypes.String},
		{Name: LinkVersion, Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: LinkPosition, Type: arrow.PrimitiveTypes.Int64},
		{Name: LinkSource, Type: arrow.BinaryTypes.String},
		{Name: LinkLine, Type: arrow.PrimitiveTypes.Int64},
	}, &md)
}
