package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestDemo runs `fhirlake demo` end to end on the small store and checks it published and summarised the run.
func TestDemo(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"demo", "--out", t.TempDir(), "--store", testStore, "--log-format", "json"},
		func(string) string { return "" }, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	for _, want := range []string{"Patient", "total", "published in"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout.String())
		}
	}
	if !strings.Contains(stderr.String(), `"run_id"`) || !strings.Contains(stderr.String(), `"severity"`) {
		t.Errorf("logs are not Cloud Logging JSON with run_id:\n%s", stderr.String())
	}
}
