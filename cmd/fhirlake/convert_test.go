package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gocloud.dev/blob"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// bucketKeys lists the key of every object of b under prefix, in the bucket's order (by key).
func bucketKeys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return keys
		}
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, obj.Key)
	}
}

func TestParseConvertConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    convertConfig
		wantErr string
	}{
		{
			name: "defaults",
			want: convertConfig{Out: "./fhirlake-out", MaxLineBytes: 64 << 20, RecursionDepth: 2, DedupeKeys: 1 << 20, Validator: "fast",
				Log: logConfig{Format: "auto", Level: "info"}},
		},
		{
			name: "environment",
			env:  map[string]string{"FHIRLAKE_IN": "gs://b/x", "FHIRLAKE_WORKERS": "3", "FHIRLAKE_LOG_FORMAT": "json"},
			want: convertConfig{In: "gs://b/x", Out: "./fhirlake-out", Workers: 3, MaxLineBytes: 64 << 20,
				RecursionDepth: 2, DedupeKeys: 1 << 20, Validator: "fast", Log: logConfig{Format: "json", Level: "info"}},
		},
		{
			name: "flags override the environment",
			args: []string{"--workers", "5", "--out", "o", "--recursion-depth", "3", "--dedupe-keys", "-1"},
			env:  map[string]string{"FHIRLAKE_WORKERS": "3", "FHIRLAKE_OUT": "elsewhere", "FHIRLAKE_DEDUPE_KEYS": "5000"},
			want: convertConfig{Out: "o", Workers: 5, MaxLineBytes: 64 << 20, RecursionDepth: 3, DedupeKeys: -1, Validator: "fast",
				Log: logConfig{Format: "auto", Level: "info"}},
		},
		{
			name: "reference validator from the environment",
			env:  map[string]string{"FHIRLAKE_VALIDATOR": "reference"},
			want: convertConfig{Out: "./fhirlake-out", MaxLineBytes: 64 << 20, RecursionDepth: 2, DedupeKeys: 1 << 20, Validator: "reference",
				Log: logConfig{Format: "auto", Level: "info"}},
		},
		{
			name: "tasks from Cloud Run",
			env:  map[string]string{"CLOUD_RUN_TASK_COUNT": "8", "CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_EXECUTION": "job-x7"},
			want: convertConfig{Out: "./fhirlake-out", MaxLineBytes: 64 << 20, RecursionDepth: 2, DedupeKeys: 1 << 20, Validator: "fast",
				Log: logConfig{Format: "auto", Level: "info"}, Task: taskConfig{Tasks: 8, TaskIndex: 3, RunID: "job-x7"}},
		},
		{
			name: "task flags override Cloud Run",
			args: []string{"--tasks", "3", "--task-index", "2", "--split-bytes", "1000"},
			env:  map[string]string{"CLOUD_RUN_TASK_COUNT": "8", "CLOUD_RUN_TASK_INDEX": "7"},
			want: convertConfig{Out: "./fhirlake-out", MaxLineBytes: 64 << 20, RecursionDepth: 2, DedupeKeys: 1 << 20, Validator: "fast",
				Log: logConfig{Format: "auto", Level: "info"}, Task: taskConfig{Tasks: 3, TaskIndex: 2, SplitBytes: 1000}},
		},
		{name: "task index out of range", args: []string{"--tasks", "3", "--task-index", "3"}, wantErr: "--task-index"},
		{name: "task index without tasks", args: []string{"--task-index", "1"}, wantErr: "--task-index"},
		{name: "negative split bytes", args: []string{"--split-bytes", "-1"}, wantErr: "--split-bytes"},
		{name: "bad environment value", env: map[string]string{"FHIRLAKE_WORKERS": "many"}, wantErr: "FHIRLAKE_WORKERS"},
		{name: "negative workers", args: []string{"--workers", "-1"}, wantErr: "--workers"},
		{name: "tiny line limit", args: []string{"--max-line-bytes", "10"}, wantErr: "--max-line-bytes"},
		{name: "zero depth", args: []string{"--recursion-depth", "0"}, wantErr: "--recursion-depth"},
		{name: "no dedupe keys", args: []string{"--dedupe-keys", "0"}, wantErr: "--dedupe-keys"},
		{name: "bad log format", args: []string{"--log-format", "xml"}, wantErr: "--log-format"},
		{name: "unknown validator", args: []string{"--validator", "quick"}, wantErr: "--validator"},
		{name: "bad validator flag over a good environment", env: map[string]string{"FHIRLAKE_VALIDATOR": "reference"}, args: []string{"--validator", "none"}, wantErr: "--validator"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, wantErr: "--log-level"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConvertConfig(tt.args, env(tt.env), &bytes.Buffer{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("config = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestJSONLogsUseCloudLoggingKeys(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(logConfig{Format: "auto", Level: "info"}, &buf) // a buffer is not a terminal: JSON
	log.Warn("careful", "object", "Patient.ndjson")
	log.Debug("hidden")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON line: %q: %v", buf.String(), err)
	}
	if rec["severity"] != "WARNING" || rec["message"] != "careful" || rec["object"] != "Patient.ndjson" {
		t.Errorf("record = %v, want severity WARNING, message careful", rec)
	}
	if _, ok := rec[slog.LevelKey]; ok {
		t.Errorf("record keeps slog's %q key: %v", slog.LevelKey, rec)
	}
}

// TestConvertEmbeddedSample runs the README's first command as a user would, into a temporary directory.
func TestConvertEmbeddedSample(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"convert", "--out", out}, env(nil), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	if !regexp.MustCompile(`(?m)^\s+total\s+126\s+0\s+10\s*$`).MatchString(stdout.String()) {
		t.Errorf("summary lacks the total line of 126 rows, 0 rejects, 10 files:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "126 lines from 10 objects") {
		t.Errorf("summary lacks the throughput line:\n%s", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(out, "_manifest.json")); err != nil {
		t.Errorf("no manifest: %v", err)
	}
	parts, _ := filepath.Glob(filepath.Join(out, "*", "part-*.parquet"))
	if len(parts) != 10 {
		t.Errorf("%d part files, want 10: %v", len(parts), parts)
	}
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["severity"] == nil || rec["message"] == nil {
			t.Errorf("log line is not Cloud Logging JSON: %q", l)
		}
	}

	// A second run of the same source replaces the first; exit code and output stay the same.
	stdout.Reset()
	if code := run(context.Background(), []string{"convert", "--out", out}, env(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("second run: exit %d", code)
	}
	if again, _ := filepath.Glob(filepath.Join(out, "*", "part-*.parquet")); len(again) != 10 {
		t.Errorf("after a second run: %d part files, want 10", len(again))
	}
}

// TestConvertLogsDedupeKeys: the progress log of a run over per-Patient objects says how many keys the run holds
// and their memory, which grow with the input up to --dedupe-keys, and how many it spilled past that; a run over
// per-type objects says nothing of them.
func TestConvertLogsDedupeKeys(t *testing.T) {
	in := t.TempDir()
	lines := `{"resourceType":"Patient","id":"p1"}` + "\n" +
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}` + "\n" +
		`{"resourceType":"Patient","id":"p2"}` + "\n"
	if err := os.WriteFile(filepath.Join(in, "Patient.ndjson"), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		layout, keys, want string
	}{
		{"per-patient", "100", `"dedupe_keys":3,"dedupe_mb":`},
		{"per-patient", "1", `"dedupe_keys":1,"dedupe_mb":0.001024,"dedupe_spilled":2`},
		{"per-type", "100", ""},
	} {
		var stdout, stderr bytes.Buffer
		args := []string{"convert", "--in", in, "--out", t.TempDir(), "--layout", tc.layout, "--dedupe-keys", tc.keys,
			"--workers", "1"} // one decoder: exactly one key is held before the bound
		if code := run(context.Background(), args, env(nil), &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d; stderr:\n%s", tc.layout, code, stderr.String())
		}
		var progress string
		for _, l := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(l, `"message":"progress"`) {
				progress = l
			}
		}
		if progress == "" {
			t.Fatalf("%s: no progress line:\n%s", tc.layout, stderr.String())
		}
		if got := strings.Contains(progress, "dedupe_keys"); got != (tc.want != "") || !strings.Contains(progress, tc.want) {
			t.Errorf("%s, %s keys: last progress line %s; want %q", tc.layout, tc.keys, progress, tc.want)
		}
	}
}

// TestConvertSaysWhatTheReferenceValidated checks that convert's summary and its log name the valid lines the fast
// validator left to the reference (a shape it does not model, here an escaped key), which convert at the
// reference's speed, and that the embedded sample, which has none, gets no such line.
func TestConvertSaysWhatTheReferenceValidated(t *testing.T) {
	in := t.TempDir()
	lines := `{"resourceType":"Patient","id":"plain","active":true}` + "\n" +
		`{"resourceType":"Patient","id":"escaped-key","\u0061ctive":true}` + "\n"
	if err := os.WriteFile(filepath.Join(in, "Patient.ndjson"), []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"convert", "--in", in, "--out", t.TempDir()}, env(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "1 of 2 valid lines are in a shape the fast validator does not model") {
		t.Errorf("summary does not say that the reference validated one line:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), `"valid_by_reference":1`) {
		t.Errorf("the convert finished log does not count it:\n%s", stderr.String())
	}

	stdout.Reset()
	if code := run(context.Background(), []string{"convert", "--out", t.TempDir()}, env(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("embedded sample: exit %d", code)
	}
	if strings.Contains(stdout.String(), "fast validator does not model") {
		t.Errorf("the embedded sample's summary names lines the reference validated:\n%s", stdout.String())
	}
}

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
	}{
		{name: "no command", args: nil, code: 2},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2},
		{name: "help", args: []string{"help"}, code: 0},
		{name: "convert help", args: []string{"convert", "-h"}, code: 0},
		{name: "convert bad flag", args: []string{"convert", "--nope"}, code: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if got := run(context.Background(), tt.args, env(nil), &stdout, &stderr); got != tt.code {
				t.Errorf("exit %d, want %d; stderr: %s", got, tt.code, stderr.String())
			}
		})
	}
}
