package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob/memblob"
	"gocloud.dev/gcerrors"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

func sampleManifest() *Manifest {
	return &Manifest{
		FHIRVersion:   "4.0.1",
		SchemaVersion: "1",
		Validator:     "fast",
		RunID:         "run-42",
		Source:        "gs://exports/2024-05-01",
		Started:       time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
		Finished:      time.Date(2024, 5, 1, 12, 3, 7, 250_000_000, time.UTC),
		Totals: Totals{Lines: 9, Valid: 7, Rejected: 2, Duplicates: 1, Rows: 6, Links: 4, ValidByReference: 1, BlockIssues: 1, Unparsed: 1,
			RejectedInputs: 1},
		Resources: map[string]ResourceStats{
			"Patient": {Lines: 3, Valid: 2, Rejected: 1, Rows: 2, Links: 1, ValidByReference: 1, Files: []File{
				{Key: "Patient/part-00000.parquet", Rows: 2, Bytes: 4096},
			}},
			"Practitioner": {Lines: 2, Valid: 2, Rows: 2, Files: []File{
				{Key: "Practitioner/part-00000.parquet", Rows: 2, Bytes: 1500},
			}},
			"Observation": {Lines: 3, Valid: 3, Duplicates: 1, Rows: 2, Links: 3, Files: []File{
				{Key: "Observation/part-00000.parquet", Rows: 2, Bytes: 3000},
				{Key: "Observation/part-00001.parquet", Rows: 1, Bytes: 2000},
			}},
		},
		Inputs: []Input{
			{Object: "2024-05-01/Observation.ndjson", Lines: 3, Bytes: 900},
			{Object: "2024-05-01/Patient.ndjson", Lines: 4, Bytes: 1200, Layout: "per-patient", Blocks: 1, Headers: 1},
			{Object: "2024-05-01/Practitioner.ndjson.gz", Lines: 2, Bytes: 700, Layout: "per-type",
				Error: "truncated gzip stream: the object ends before its data does"},
		},
		PatientLinks: []File{{Key: "_patient_links/part-00000.parquet", Rows: 4, Bytes: 900}},
		BlockIssues: []BlockIssue{
			{Object: "2024-05-01/Patient.ndjson", Line: 1, Reason: "the Parameters header names a Patient that does not follow in its block"},
		},
		Rejects: []File{
			{Key: "_rejects/Patient.ndjson", Rows: 1, Bytes: 300},
			{Key: "_rejects/_unparsed.ndjson", Rows: 1, Bytes: 12},
			{Key: "_rejects/errors.ndjson", Rows: 3, Bytes: 400},
		},
		Export:          json.RawMessage(`{"kind":"bulk","status_url":"https://example.test/op/1"}`),
		TransactionTime: "2024-05-01T11:59:00Z",
		PhaseSeconds:    map[string]float64{"export": 120.5, "convert": 66.75},
		Extra:           map[string]json.RawMessage{"note": json.RawMessage(`"<kept as is>"`)},
	}
}

func TestManifestGolden(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	if err := WriteManifest(ctx, b, "run", sampleManifest()); err != nil {
		t.Fatal(err)
	}
	got, err := b.ReadAll(ctx, "run/_manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "manifest.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("manifest differs from %s (run with -update if intended):\n%s", golden, got)
	}
	attrs, err := b.Attributes(ctx, "run/_manifest.json")
	if err != nil {
		t.Fatal(err)
	}
	if attrs.ContentType != jsonType {
		t.Errorf("content type %q", attrs.ContentType)
	}
}

func TestManifestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		out  string
		m    *Manifest
		// wantJSON are fragments the written manifest must hold
		wantJSON []string
	}{
		{
			name:     "full",
			out:      "a/b",
			m:        sampleManifest(),
			wantJSON: []string{`"run_id": "run-42"`, `"finished": "2024-05-01T12:03:07.25Z"`},
		},
		{
			name: "minimal, at the bucket root",
			out:  "",
			m: &Manifest{FHIRVersion: "4.0.1", SchemaVersion: "1", Source: "in",
				Resources: map[string]ResourceStats{"Patient": {Rejected: 1}}},
			wantJSON: []string{`"inputs": []`, `"rejects": []`, `"files": []`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := memblob.OpenBucket(nil)
			defer b.Close()
			if err := WriteManifest(ctx, b, tc.out, tc.m); err != nil {
				t.Fatal(err)
			}
			raw, err := b.ReadAll(ctx, ObjectKey(tc.out, "_manifest.json"))
			if err != nil {
				t.Fatal(err)
			}
			for _, frag := range tc.wantJSON {
				if !strings.Contains(string(raw), frag) {
					t.Errorf("manifest lacks %s:\n%s", frag, raw)
				}
			}
			for _, absent := range []string{"null", `"export"`} {
				if tc.m.Export == nil && strings.Contains(string(raw), absent) {
					t.Errorf("manifest holds %s:\n%s", absent, raw)
				}
			}
			got, err := ReadManifest(ctx, b, tc.out)
			if err != nil {
				t.Fatal(err)
			}
			want, err := tc.m.marshal()
			if err != nil {
				t.Fatal(err)
			}
			again, err := got.marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, want) {
				t.Errorf("read back:\n%s\nwrote:\n%s", again, want)
			}
			// Field by field too, but for the raw JSON, which comes back indented (compared above).
			g, w := *got, *tc.m
			g.Export, g.Extra, w.Export, w.Extra = nil, nil, nil, nil
			if tc.m.Inputs != nil && !reflect.DeepEqual(g, w) {
				t.Errorf("read back %+v, wrote %+v", g, w)
			}
		})
	}
}

func TestReadManifestAbsent(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	_, err := ReadManifest(ctx, b, "run")
	if !errors.Is(err, os.ErrNotExist) || gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("ReadManifest of nothing = %v, want os.ErrNotExist and NotFound", err)
	}
	if err := b.WriteAll(ctx, "run/_manifest.json", []byte("{not json"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(ctx, b, "run"); err == nil || errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadManifest of a broken manifest = %v, want a decode error", err)
	}
}

func TestUnpublish(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	for _, k := range []string{"run/Patient/part-00000.parquet", "other/_manifest.json"} {
		if err := b.WriteAll(ctx, k, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteManifest(ctx, b, "run", sampleManifest()); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(ctx, b, "run"); err != nil {
		t.Fatal(err)
	}
	if err := Unpublish(ctx, b, "run"); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadManifest(ctx, b, "run"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Unpublish, ReadManifest = %v", err)
	}
	if err := Unpublish(ctx, b, "run"); err != nil {
		t.Errorf("Unpublish of nothing = %v", err)
	}
	if got, want := keys(t, b), []string{"other/_manifest.json", "run/Patient/part-00000.parquet"}; !slices.Equal(got, want) {
		t.Errorf("bucket holds %q, want %q", got, want)
	}
}

func TestRemoveStale(t *testing.T) {
	tests := []struct {
		name        string
		out         string
		objects     []string // bucket keys
		keep        []string // relative to out
		wantRemoved []string
	}{
		{
			name: "under a prefix",
			out:  "run",
			objects: []string{
				"run/Patient/part-00000.parquet",
				"run/Patient/part-00001.parquet",
				"run/Observation/part-00000.parquet",
				"run/_rejects/Patient.ndjson",
				"run/_rejects/errors.ndjson",
				"run/_manifest.json",
				"run/notes.txt",
				"run/Patient/README.md",
				"run/Patient/part-1.parquet",
				"run/Patient/sub/part-00000.parquet",
				"run/_rejects/keep/x.ndjson",
				"run/_patient_links/part-00000.parquet",
				"run/_patient_links/part-00001.parquet",
				"run/_patient_links/notes.parquet",
				"run/_other/part-00000.parquet",
				"run/_patient_links/sub/part-00000.parquet",
				"runx/Patient/part-00000.parquet",
				"other/Patient/part-00000.parquet",
			},
			keep: []string{"Patient/part-00000.parquet", "_rejects/errors.ndjson", "_patient_links/part-00000.parquet"},
			wantRemoved: []string{"Observation/part-00000.parquet", "Patient/part-00001.parquet",
				"_patient_links/part-00001.parquet", "_rejects/Patient.ndjson"},
		},
		{
			name: "task parts",
			out:  "run",
			objects: []string{
				"run/Patient/part-t0003-00000.parquet",
				"run/Patient/part-t0003-d-00000.parquet",
				"run/Patient/part-t0001-00000.parquet",
				"run/Patient/part-t0001-u-00000.parquet",
				"run/_patient_links/part-t0002-00000.parquet",
				"run/_rejects/errors-t0002.ndjson",
				"run/Patient/part-t3-00000.parquet",
				"run/Patient/part-t0003-x-00000.parquet",
				"run/_runs/r/tasks/3.json",
				"run/_runs/r/tasks/3.keys/Patient",
			},
			keep: []string{"Patient/part-t0003-d-00000.parquet", "_rejects/errors-t0002.ndjson"},
			wantRemoved: []string{"Patient/part-t0001-00000.parquet", "Patient/part-t0001-u-00000.parquet",
				"Patient/part-t0003-00000.parquet", "_patient_links/part-t0002-00000.parquet"},
		},
		{
			name: "parts rewritten by one process",
			out:  "run",
			objects: []string{
				"run/Organization/part-00000.parquet",
				"run/Organization/part-d-00000.parquet",
				"run/Organization/part-d-00001.parquet",
				"run/Organization/part-dd-00000.parquet",
				"run/_dedupe/1/Organization/00000",
			},
			keep:        []string{"Organization/part-d-00000.parquet"},
			wantRemoved: []string{"Organization/part-00000.parquet", "Organization/part-d-00001.parquet"},
		},
		{
			name: "bucket root",
			out:  "",
			objects: []string{
				"Patient/part-00000.parquet",
				"Patient/part-00001.parquet",
				"_rejects/_unparsed.ndjson",
				"_manifest.json",
				"input/Patient.ndjson",
				"run/Patient/part-00000.parquet",
				"_patient_links/part-00003.parquet",
			},
			keep:        []string{"Patient/part-00000.parquet"},
			wantRemoved: []string{"Patient/part-00001.parquet", "_patient_links/part-00003.parquet", "_rejects/_unparsed.ndjson"},
		},
		{
			name:    "nothing stale",
			out:     "run",
			objects: []string{"run/Patient/part-00000.parquet", "run/_manifest.json"},
			keep:    []string{"Patient/part-00000.parquet"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := memblob.OpenBucket(nil)
			defer b.Close()
			for _, k := range tc.objects {
				if err := b.WriteAll(ctx, k, []byte("x"), nil); err != nil {
					t.Fatal(err)
				}
			}
			keep := map[string]bool{}
			for _, k := range tc.keep {
				keep[k] = true
			}
			removed, err := RemoveStale(ctx, b, tc.out, keep)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(removed, tc.wantRemoved) {
				t.Errorf("removed %q, want %q", removed, tc.wantRemoved)
			}
			var want []string
			for _, k := range tc.objects {
				rel, _ := strings.CutPrefix(k, ObjectKey(tc.out, ""))
				if !slices.Contains(tc.wantRemoved, rel) {
					want = append(want, k)
				}
			}
			slices.Sort(want)
			if got := keys(t, b); !slices.Equal(got, want) {
				t.Errorf("bucket holds %q, want %q", got, want)
			}
		})
	}
}
