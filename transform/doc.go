// Package transform is the middle stage of a conversion run: pipeline hands it one NDJSON line at a time (as read
// by reader), and it validates the line as a FHIR R4 resource with google/fhir/go jsonformat (Validator) and, when
// the resource is valid, converts its original JSON into a row of the Arrow record batch of its resource type,
// following the schema package (Worker). Invalid lines come back as a Verdict or Result carrying Issues, each an
// element path, an OperationOutcome issue-type code and a detail that never holds a value from the resource, so
// that pipeline can quarantine them through sinks.
//
// transform imports only schema among fhirlake's packages. Every type here is meant for one goroutine: a pipeline
// runs one Worker (and so one Validator) per worker goroutine, never one goroutine per resource.
package transform
