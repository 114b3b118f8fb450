package sinks

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"gocloud.dev/blob/memblob"
)

// failingReader yields some bytes, then an error: a source object that breaks while an oversize line is copied.
type failingReader struct{ done bool }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.done {
		return 0, fmt.Errorf("connection reset")
	}
	f.done = true
	return copy(p, `{"resourceType":"Patient","na`), nil
}

func TestRejectsWritesQuarantine(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		rejects []Reject
		raws    []io.Reader // per reject; nil entries use Raw
		// objects are recorded with WriteInput after the rejects
		objects []errorLine
		// want maps keys relative to out to their exact content
		want map[string]string
	}{
		{
			name: "typed, unknown, malformed and streamed lines",
			out:  "run",
			rejects: []Reject{
				{Source: "in/Patient.ndjson", Line: 3, ResourceType: "Patient", Known: true, ID: "p1",
					Issues: []Issue{{Path: "Patient.birthDate", Code: "value", Detail: "invalid date"}},
					Raw:    []byte(`{"resourceType":"Patient","id":"p1","birthDate":"x"}`)},
				{Source: "in/Mixed.ndjson", Line: 1, ResourceType: "Foo", Known: false,
					Issues: []Issue{{Path: "", Code: "not-supported", Detail: "unknown resource type"}},
					Raw:    []byte(`{"resourceType":"Foo"}`)},
				{Source: "in/Mixed.ndjson", Line: 2, ResourceType: "", Known: false,
					Issues: []Issue{{Path: "", Code: "structure", Detail: "malformed JSON <at> offset 3 & more"}},
					Raw:    []byte(`{"resou`)},
				{Source: "in/Patient.ndjson", Line: 9, ResourceType: "Patient", Known: true, ID: "",
					Issues: []Issue{{Path: "Patient", Code: "too-long", Detail: "line exceeds 16 bytes"}}},
				{Source: "in/Obs.ndjson", Line: 7, ResourceType: "Observation", Known: true, ID: "o7",
					Issues: []Issue{
						{Path: "Observation.status", Code: "required", Detail: "missing required field"},
						{Path: "Observation.code", Code: "required", Detail: "missing required field"},
					},
					Raw: []byte(`{"resourceType":"Observation","id":"o7"}`)},
			},
			raws: []io.Reader{nil, nil, nil, strings.NewReader(`{"resourceType":"Patient","photo":"QUJD"}`), nil},
			want: map[string]string{
				"_rejects/Patient.ndjson": `{"resourceType":"Patient","id":"p1","birthDate":"x"}` + "\n" +
					`{"resourceType":"Patient","photo":"QUJD"}` + "\n",
				"_rejects/Observation.ndjson": `{"resourceType":"Observation","id":"o7"}` + "\n",
				"_rejects/_unparsed.ndjson":   `{"resourceType":"Foo"}` + "\n" + `{"resou` + "\n",
				"_rejects/errors.ndjson": `{"source":"in/Patient.ndjson","line":3,"resourceType":"Patient","id":"p1","issues":[{"path":"Patient.birthDate","code":"value","detail":"invalid date"}]}
{"source":"in/Mixed.ndjson","line":1,"resourceType":"Foo","issues":[{"path":"","code":"not-supported","detail":"unknown resource type"}]}
{"source":"in/Mixed.ndjson","line":2,"resourceType":"","issues":[{"path":"","code":"structure","detail":"malformed JSON <at> offset 3 & more"}]}
{"source":"in/Patient.ndjson","line":9,"resourceType":"Patient","issues":[{"path":"Patient","code":"too-long","detail":"line exceeds 16 bytes"}]}
{"source":"in/Obs.ndjson","line":7,"resourceType":"Observation","id":"o7","issues":[{"path":"Observation.status","code":"required","detail":"missing required field"},{"path":"Observation.code","code":"required","detail":"missing required field"}]}
`,
			},
		},
		{
			name: "bucket root, a known type that is not a name, no issues",
			out:  "",
			rejects: []Reject{
				{Source: "a", Line: 1, ResourceType: "../x", Known: true, Raw: []byte(`{}`)},
			},
			want: map[string]string{
				"_rejects/_unparsed.ndjson": "{}\n",
				"_rejects/errors.ndjson":    `{"source":"a","line":1,"resourceType":"../x","issues":[]}` + "\n",
			},
		},
		{
			name: "hostile types claimed known: every one to _unparsed, their names only as JSON values",
			out:  "run",
			rejects: []Reject{
				{Source: "a", Line: 1, ResourceType: "Patient/../../../x", Known: true, Raw: []byte(`1`)},
				{Source: "a", Line: 2, ResourceType: "_manifest", Known: true, Raw: []byte(`2`)},
				{Source: "a", Line: 3, ResourceType: "Pa\x00tient", Known: true, Raw: []byte(`3`)},
				{Source: "a", Line: 4, ResourceType: "Patient\n", Known: true, Raw: []byte(`4`)},
				{Source: "a", Line: 5, ResourceType: "P\u0430tient", Known: true, Raw: []byte(`5`)},
			},
			want: map[string]string{
				"_rejects/_unparsed.ndjson": "1\n2\n3\n4\n5\n",
				"_rejects/errors.ndjson": `{"source":"a","line":1,"resourceType":"Patient/../../../x","issues":[]}
{"source":"a","line":2,"resourceType":"_manifest","issues":[]}
{"source":"a","line":3,"resourceType":"Pa\u0000tient","issues":[]}
{"source":"a","line":4,"resourceType":"Patient\n","issues":[]}
{"source":"a","line":5,"resourceType":"Pаtient","issues":[]}
`,
			},
		},
		{
			name: "a damaged object beside a rejected line: an entry, nothing quarantined",
			out:  "run",
			rejects: []Reject{
				{Source: "in/a.ndjson.gz", Line: 2, Issues: []Issue{{Code: "structure", Detail: "not a JSON object"}},
					Raw: []byte(`[]`)},
			},
			objects: []errorLine{{Source: "in/a.ndjson.gz", Line: 41,
				Issues: []Issue{{Code: "structure", Detail: "truncated gzip stream"}}}},
			want: map[string]string{
				"_rejects/_unparsed.ndjson": "[]\n",
				"_rejects/errors.ndjson": `{"source":"in/a.ndjson.gz","line":2,"resourceType":"","issues":[{"path":"","code":"structure","detail":"not a JSON object"}]}
{"source":"in/a.ndjson.gz","line":41,"object":true,"resourceType":"","issues":[{"path":"","code":"structure","detail":"truncated gzip stream"}]}
`,
			},
		},
		{
			name: "nothing rejected",
			out:  "run",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := memblob.OpenBucket(nil)
			defer b.Close()
			r := NewRejects(b, tc.out)
			for i, rej := range tc.rejects {
				var raw io.Reader
				if tc.raws != nil {
					raw = tc.raws[i]
				}
				if err := r.Write(ctx, rej, raw); err != nil {
					t.Fatalf("Write %d: %v", i, err)
				}
			}
			for _, o := range tc.objects {
				if err := r.WriteInput(ctx, o.Source, o.Line, o.Issues); err != nil {
					t.Fatalf("WriteInput %s: %v", o.Source, err)
				}
			}
			files, err := r.Close(ctx)
			if err != nil {
				t.Fatalf("Close: %v", err)
			}
			var wantFiles []File
			for rel, content := range tc.want {
				wantFiles = append(wantFiles, File{Key: rel, Rows: int64(strings.Count(content, "\n")), Bytes: int64(len(content))})
			}
			slices.SortFunc(wantFiles, func(a, b File) int { return strings.Compare(a.Key, b.Key) })
			if !slices.Equal(files, wantFiles) {
				t.Errorf("files:\n got %+v\nwant %+v", files, wantFiles)
			}
			var wantKeys []string
			for _, f := range wantFiles {
				wantKeys = append(wantKeys, ObjectKey(tc.out, f.Key))
			}
			if got := keys(t, b); !slices.Equal(got, wantKeys) {
				t.Errorf("bucket holds %q, want %q", got, wantKeys)
			}
			for rel, want := range tc.want {
				got, err := b.ReadAll(ctx, ObjectKey(tc.out, rel))
				if err != nil {
					t.Fatalf("read %s: %v", rel, err)
				}
				if string(got) != want {
					t.Errorf("%s:\n got %s\nwant %s", rel, got, want)
				}
			}
			again, err := r.Close(ctx)
			if err != nil || !slices.Equal(again, files) {
				t.Errorf("second Close = %v, %v; want the same files", again, err)
			}
		})
	}
}

func TestRejectsConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	r := NewRejects(b, "out")
	const workers, lines = 4, 50
	types := []string{"Patient", "Observation"}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				rej := Reject{Source: fmt.Sprintf("in/%d", w), Line: int64(i + 1), ResourceType: types[w%2], Known: true,
					Issues: []Issue{{Path: types[w%2], Code: "invalid", Detail: "bad"}}, Raw: []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))}
				if err := r.Write(ctx, rej, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	files, err := r.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]int64{}
	for _, f := range files {
		rows[f.Key] = f.Rows
		data, err := b.ReadAll(ctx, "out/"+f.Key)
		if err != nil {
			t.Fatal(err)
		}
		if n := int64(strings.Count(string(data), "\n")); n != f.Rows || int64(len(data)) != f.Bytes {
			t.Errorf("%s: %d lines, %d bytes; File says %d, %d", f.Key, n, len(data), f.Rows, f.Bytes)
		}
	}
	want := map[string]int64{"_rejects/Patient.ndjson": 100, "_rejects/Observation.ndjson": 100, "_rejects/errors.ndjson": 200}
	if len(rows) != len(want) {
		t.Errorf("files %v, want %v", rows, want)
	}
	for k, n := range want {
		if rows[k] != n {
			t.Errorf("%s: %d lines, want %d", k, rows[k], n)
		}
	}
}

func TestRejectsFailureCommitsNothing(t *testing.T) {
	tests := []struct {
		name string
		fail func(ctx context.Context, r *Rejects) error
	}{
		{
			name: "Abort",
			fail: func(ctx context.Context, r *Rejects) error { r.Abort(); return fmt.Errorf("aborted") },
		},
		{
			name: "streamed line breaks",
			fail: func(ctx context.Context, r *Rejects) error {
				rej := Reject{Source: "in/big", Line: 5, ResourceType: "Patient", Known: true}
				return r.Write(ctx, rej, &failingReader{})
			},
		},
		{
			name: "context cancelled",
			fail: func(ctx context.Context, r *Rejects) error {
				ctx, cancel := context.WithCancel(ctx)
				cancel()
				_, err := r.Close(ctx)
				return err
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := memblob.OpenBucket(nil)
			defer b.Close()
			r := NewRejects(b, "out")
			rej := Reject{Source: "in/p", Line: 1, ResourceType: "Patient", Known: true,
				Issues: []Issue{{Code: "invalid"}}, Raw: []byte(`{"resourceType":"Patient"}`)}
			if err := r.Write(ctx, rej, nil); err != nil {
				t.Fatal(err)
			}
			err := tc.fail(ctx, r)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "resourceType") {
				t.Errorf("error holds line content: %v", err)
			}
			if err := r.Write(ctx, rej, nil); err == nil {
				t.Error("Write after the failure: no error")
			}
			if files, err := r.Close(ctx); err == nil {
				t.Errorf("Close after the failure = %v, no error", files)
			}
			if got := keys(t, b); len(got) != 0 {
				t.Errorf("the failed quarantine left %q", got)
			}
		})
	}
}
