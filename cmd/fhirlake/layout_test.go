package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLayoutFlag(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    layoutFlag
		wantErr string
	}{
		{name: "default is auto", want: ""},
		{name: "auto", args: []string{"--layout", "auto"}, want: ""},
		{name: "per-patient", args: []string{"--layout", "per-patient"}, want: "per-patient"},
		{name: "environment", env: map[string]string{"FHIRLAKE_LAYOUT": "per-type"}, want: "per-type"},
		{name: "flag over environment", args: []string{"--layout", "per-patient"}, env: map[string]string{"FHIRLAKE_LAYOUT": "per-type"}, want: "per-patient"},
		{name: "unknown", args: []string{"--layout", "by-patient"}, wantErr: "unknown layout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConvertConfig(tt.args, env(tt.env), &bytes.Buffer{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Layout != tt.want {
				t.Errorf("layout = %q, want %q", c.Layout, tt.want)
			}
		})
	}
}

// TestConvertPerPatient: auto reads the shared per-Patient export in blocks and the summary says so.
func TestConvertPerPatient(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole-data run; skipped in -short")
	}
	in := filepath.Join("..", "..", "..", "shared", "data", "synthea-group-by-patient")
	if _, err := os.Stat(in); err != nil {
		t.Skipf("shared data absent: %v", err)
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"convert", "--in", in, "--out", t.TempDir(), "--workers", "2"}, env(nil), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	if want := "per-Patient: 27 blocks, 14 duplicates written once, 10655 links, 0 block issues"; !strings.Contains(stdout.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, stdout.String())
	}
}

// TestConvertMalformedBlock: --layout per-patient reports a file that opens with a non-Patient line by object and
// line, without content, and converts the file.
func TestConvertMalformedBlock(t *testing.T) {
	in := t.TempDir()
	content := `{"resourceType":"Organization","id":"secret-org"}` + "\n" + `{"resourceType":"Patient","id":"secret-p"}` + "\n"
	if err := os.WriteFile(filepath.Join(in, "x.ndjson"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"convert", "--in", in, "--out", t.TempDir(), "--layout", "per-patient"}, env(nil), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	logs := stderr.String()
	if !strings.Contains(logs, `"message":"malformed Patient block"`) || !strings.Contains(logs, `"object":"x.ndjson","line":1`) {
		t.Errorf("no warning naming x.ndjson line 1:\n%s", logs)
	}
	if strings.Contains(logs, "secret") || strings.Contains(stdout.String(), "secret") {
		t.Errorf("output repeats resource content:\n%s\n%s", logs, stdout.String())
	}
	if !strings.Contains(stdout.String(), "1 block issues") || !strings.Contains(stdout.String(), "2 lines from 1 objects") {
		t.Errorf("summary:\n%s", stdout.String())
	}
}
