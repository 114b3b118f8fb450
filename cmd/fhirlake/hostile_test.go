package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// phiCanary is planted in every hostile line; it must reach no log line, no output of the command, no error and
// no manifest.
const phiCanary = "PHI-CANARY-c7d41e"

// hostileInput writes one object per class of hostile input of issue 7 (the 64 MiB line aside: pipeline's tests
// have it), each line holding the canary, beside a valid object.
func hostileInput(t *testing.T) string {
	t.Helper()
	p := func(id, extra string) string {
		return `{"resourceType":"Patient","id":"` + id + `","name":[{"family":"` + phiCanary + extra + `"}]}`
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	for i := range 200 {
		zw.Write([]byte(p("gz"+strings.Repeat("x", i%7)+string(rune('a'+i%26)), strings.Repeat("y", i)) + "\n"))
	}
	zw.Close()
	depth := strings.Repeat("[", 100_000) + `"` + phiCanary + `"` + strings.Repeat("]", 100_000)
	files := map[string]string{
		"valid.ndjson": p("v1", "") + "\n" + p("v2", "") + "\n",
		"malformed.ndjson": `{"resourceType":"Patient","name":[{"family":"` + phiCanary + `"}]` + "\n" +
			`{"resourceType":"Patient","name":'` + phiCanary + `'}` + "\n",
		"utf8.ndjson":     p("u1", "\xff\xfe") + "\n" + p("u2", "\xed\xa0\x80") + "\n",
		"nul.ndjson":      p("n1", "\x00") + "\n",
		"oversize.ndjson": p("o1", strings.Repeat("z", 4096)) + "\n",
		"deep.ndjson":     `{"resourceType":"Basic","code":{"text":"t"},"extension":` + depth + "}\n" + depth + "\n",
		"dup.ndjson": `{"resourceType":"Patient","id":"d1","gender":"male","gender":"` + phiCanary + `"}` + "\n" +
			`{"resourceType":"Basic","resourceType":"` + phiCanary + `"}` + "\n",
		"unknown.ndjson": `{"resourceType":"Frobnication","note":"` + phiCanary + `"}` + "\n" +
			`{"resourceType":"` + phiCanary + `"}` + "\n",
		"shape.ndjson": `{"name":"` + phiCanary + `"}` + "\n" + `{"resourceType":42,"x":"` + phiCanary + `"}` + "\n" +
			`["` + phiCanary + `"]` + "\n" + `"` + phiCanary + `"` + "\n",
		"invalid-values.ndjson": `{"resourceType":"Patient","birthDate":"` + phiCanary + `","gender":"` + phiCanary +
			`","active":"` + phiCanary + `","telecom":[{"system":"` + phiCanary + `"}]}` + "\n" +
			`{"resourceType":"Observation","status":"` + phiCanary + `","code":{"text":"` + phiCanary +
			`"},"subject":{"reference":"Medication/` + phiCanary + `"},"valueQuantity":{"value":"` + phiCanary + `"}}` + "\n",
		"empty.ndjson":        "",
		"no-newline.ndjson":   p("l1", "") + "\n" + `{"resourceType":"Patient","name":[{"family":"` + phiCanary,
		"crlf-bom.ndjson":     "\ufeff" + p("c1", "") + "\r\n" + "\ufeff" + p("c2", "") + "\r\n",
		"truncated.ndjson.gz": gz.String()[:gz.Len()/2],
		"corrupt.ndjson.gz":   gz.String()[:10] + "\xff\xff" + phiCanary,
	}
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestConvertHostileInputLeaksNoPHI runs `fhirlake convert` over every class of hostile input at debug level and
// checks that the canary planted in every line reaches neither the logs, nor the command's output, nor the
// manifest, nor any issue; then a run that fails after quarantining hostile lines, for its error.
func TestConvertHostileInputLeaksNoPHI(t *testing.T) {
	in := hostileInput(t)
	out := t.TempDir()
	args := []string{"convert", "--in", in, "--out", out, "--workers", "2", "--max-line-bytes", "4096",
		"--log-format", "json", "--log-level", "debug"}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), args, env(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, want 0: hostile input is an outcome, not a failure; stderr:\n%s", code, stderr.String())
	}
	noCanary(t, "stdout", stdout.Bytes())
	noCanary(t, "the logs", stderr.Bytes())
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["severity"] == nil {
			t.Errorf("log line is not Cloud Logging JSON: %q", l)
		}
	}
	for _, obj := range []string{"truncated.ndjson.gz", "corrupt.ndjson.gz"} {
		if !strings.Contains(stderr.String(), `"object":"`+obj+`"`) {
			t.Errorf("no warning names the damaged object %s:\n%s", obj, stderr.String())
		}
	}
	if !strings.Contains(stdout.String(), "2 objects damaged") {
		t.Errorf("the summary does not count the 2 damaged objects:\n%s", stdout.String())
	}

	manifest, err := os.ReadFile(filepath.Join(out, "_manifest.json"))
	if err != nil {
		t.Fatalf("no manifest: %v", err)
	}
	noCanary(t, "the manifest", manifest)
	var m struct {
		Totals map[string]int64 `json:"totals"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatal(err)
	}
	tot := m.Totals
	if tot["lines"] != tot["valid"]+tot["rejected"] || tot["rejected_inputs"] != 2 || tot["rejected"] != 20 {
		t.Errorf("totals = %v, want lines = valid + rejected, 20 rejected lines and 2 rejected inputs", tot)
	}
	errs, err := os.ReadFile(filepath.Join(out, "_rejects", "errors.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(errs)), "\n") {
		var e struct {
			Source string
			Issues []struct{ Path, Code, Detail string }
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("errors.ndjson: %v", err)
		}
		for _, is := range e.Issues {
			noCanary(t, "an issue of "+e.Source, []byte(is.Path+" "+is.Detail))
		}
	}

	// A run that fails after quarantining: the quarantine cannot be committed (a directory stands where
	// errors.ndjson goes). It exits 1 and says why, without the canary.
	broken := t.TempDir()
	if err := os.MkdirAll(filepath.Join(broken, "_rejects", "errors.ndjson", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	args[4] = broken
	if code := run(context.Background(), args, env(nil), &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "convert failed") || !strings.Contains(stderr.String(), "errors.ndjson") {
		t.Errorf("the failure does not say what failed:\n%s", stderr.String())
	}
	noCanary(t, "the failed run's logs", stderr.Bytes())
	noCanary(t, "the failed run's stdout", stdout.Bytes())
	if _, err := os.Stat(filepath.Join(broken, "_manifest.json")); err == nil {
		t.Error("a failed run published a manifest")
	}
}

func noCanary(t *testing.T, where string, b []byte) {
	t.Helper()
	if i := bytes.Index(b, []byte(phiCanary)); i >= 0 {
		t.Errorf("%s holds the canary: ...%s...", where, b[max(0, i-80):min(len(b), i+len(phiCanary)+20)])
	}
}
