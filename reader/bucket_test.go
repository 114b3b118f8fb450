package reader

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocloud.dev/blob"
)

func keys(objs []Object) string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.Key)
	}
	return strings.Join(ks, ",")
}

func TestListMem(t *testing.T) {
	b := memBucket(t, map[string][]byte{
		"exp/Patient.ndjson":          []byte("{}\n"),
		"exp/Observation.ndjson.gz":   []byte("12345"),
		"exp/_manifest.json":          []byte("{}"),
		"exp/_rejects/Patient.ndjson": []byte("{}\n"),
		"exp/.hidden":                 []byte("x"),
		"exp/sub/":                    {}, // a console-made folder placeholder
		"exp/sub/Encounter":           []byte("{}\n"),
		"exp/Patient.ndjson.attrs":    []byte("{}"),
		"exp/empty.ndjson":            {},
		"exp2/Patient.ndjson":         []byte("{}\n"),
		"_run/Patient.ndjson":         []byte("{}\n"),
		"_run/_manifest.json":         []byte("{}"),
	})
	tests := []struct {
		name   string
		prefix string
		want   string
	}{
		{name: "folder prefix", prefix: "exp/", want: "exp/Observation.ndjson.gz,exp/Patient.ndjson,exp/empty.ndjson,exp/sub/Encounter"},
		{
			name:   "whole bucket",
			prefix: "",
			want:   "exp/Observation.ndjson.gz,exp/Patient.ndjson,exp/empty.ndjson,exp/sub/Encounter,exp2/Patient.ndjson",
		},
		{
			name:   "stem prefix",
			prefix: "exp",
			want:   "exp/Observation.ndjson.gz,exp/Patient.ndjson,exp/empty.ndjson,exp/sub/Encounter,exp2/Patient.ndjson",
		},
		{name: "chosen underscore folder", prefix: "_run/", want: "_run/Patient.ndjson"},
		{name: "nothing there", prefix: "none/", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := List(context.Background(), b, tt.prefix)
			if err != nil {
				t.Fatal(err)
			}
			if got := keys(objs); got != tt.want {
				t.Errorf("List(%q) = %s\nwant %s", tt.prefix, got, tt.want)
			}
		})
	}
	objs, err := List(context.Background(), b, "exp/")
	if err != nil {
		t.Fatal(err)
	}
	if objs[0].Size != 5 || objs[2].Size != 0 {
		t.Errorf("sizes %d, %d, want 5, 0", objs[0].Size, objs[2].Size)
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestListFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"Patient.ndjson":                  "{}\n",
		"Patient.ndjson.attrs":            "{}",
		"_manifest.json":                  "{}",
		"_rejects/Patient.ndjson":         "{}\n",
		".DS_Store":                       "x",
		"sub/Observation.ndjson":          "{}\n{}\n",
		"export-1_Encounter.ndjson":       "{}\n",
		"sub/.git/config":                 "x",
		"Condition/part-00000.parquet.gz": "x",
	})
	if err := os.Mkdir(filepath.Join(dir, "emptydir"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, prefix, err := OpenBucket(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Written through the bucket: no sidecar, so output directories hold only our objects. A sidecar left by
	// another fileblob user (Patient.ndjson.attrs) is still skipped.
	if err := b.WriteAll(ctx, "Written.ndjson", []byte("{}\n"), &blob.WriterOptions{ContentType: "application/x-ndjson"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "Written.ndjson.attrs")); !os.IsNotExist(err) {
		t.Fatalf("fileblob wrote a sidecar (stat: %v); OpenBucket asks it not to", err)
	}
	tests := []struct {
		name   string
		prefix string
		want   string
	}{
		{
			name:   "root",
			prefix: prefix,
			want:   "Condition/part-00000.parquet.gz,Patient.ndjson,Written.ndjson,export-1_Encounter.ndjson,sub/Observation.ndjson",
		},
		{name: "subfolder", prefix: "sub/", want: "sub/Observation.ndjson"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := List(ctx, b, tt.prefix)
			if err != nil {
				t.Fatal(err)
			}
			if got := keys(objs); got != tt.want {
				t.Errorf("List(%q) = %s\nwant %s", tt.prefix, got, tt.want)
			}
		})
	}
}

func TestOpenBucket(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"in/a.ndjson": "{}\n", "in/b/c.ndjson": "{}\n"})
	t.Chdir(dir) // for the relative paths; no t.Parallel here

	tests := []struct {
		name       string
		loc        string
		wantPrefix string
		wantKeys   string
	}{
		{name: "relative dir", loc: "in", wantKeys: "a.ndjson,b/c.ndjson"},
		{name: "dot relative dir", loc: "./in/b", wantKeys: "c.ndjson"},
		{name: "absolute dir", loc: filepath.Join(dir, "in"), wantKeys: "a.ndjson,b/c.ndjson"},
		{name: "file url", loc: "file://" + filepath.ToSlash(filepath.Join(dir, "in")), wantKeys: "a.ndjson,b/c.ndjson"},
		{name: "mem", loc: "mem://", wantKeys: ""},
		{name: "mem with prefix", loc: "mem://scratch/run/1", wantPrefix: "run/1/", wantKeys: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, prefix, err := OpenBucket(ctx, tt.loc)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if prefix != tt.wantPrefix {
				t.Errorf("prefix %q, want %q", prefix, tt.wantPrefix)
			}
			objs, err := List(ctx, b, prefix)
			if err != nil {
				t.Fatal(err)
			}
			if got := keys(objs); got != tt.wantKeys {
				t.Errorf("List = %s, want %s", got, tt.wantKeys)
			}
		})
	}
}

func TestOpenBucketErrors(t *testing.T) {
	tests := []struct {
		name string
		loc  string
	}{
		{name: "empty", loc: ""},
		{name: "missing dir", loc: filepath.Join(t.TempDir(), "absent")},
		{name: "a file, not a dir", loc: "bucket_test.go"},
		{name: "unsupported scheme", loc: "s3://bucket/x"},
		{name: "gs without bucket", loc: "gs:///x"},
		{name: "bad file url parameter", loc: "file:///tmp?nope=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _, err := OpenBucket(context.Background(), tt.loc)
			if err == nil {
				b.Close()
				t.Fatalf("OpenBucket(%q) = nil error", tt.loc)
			}
			if !strings.HasPrefix(err.Error(), "open bucket") {
				t.Errorf("error %q does not say what was being done", err)
			}
		})
	}
}

func TestParseLocation(t *testing.T) {
	tests := []struct {
		name string
		loc  string
		want location
	}{
		{name: "relative dir", loc: "data/in", want: location{dir: "data/in"}},
		{name: "absolute dir", loc: "/data/in", want: location{dir: "/data/in"}},
		{name: "file url", loc: "file:///data/in", want: location{bucketURL: "file:///data/in"}},
		{name: "gs bucket only", loc: "gs://bkt", want: location{bucketURL: "gs://bkt"}},
		{name: "gs bucket slash", loc: "gs://bkt/", want: location{bucketURL: "gs://bkt"}},
		{name: "gs prefix", loc: "gs://bkt/exports/2026-01-01", want: location{bucketURL: "gs://bkt", prefix: "exports/2026-01-01/"}},
		{name: "gs prefix with slash", loc: "gs://bkt/exports/", want: location{bucketURL: "gs://bkt", prefix: "exports/"}},
		{name: "gs query kept on bucket", loc: "gs://bkt/x?anonymous=true", want: location{bucketURL: "gs://bkt?anonymous=true", prefix: "x/"}},
		{name: "upper case scheme", loc: "GS://bkt/x", want: location{bucketURL: "gs://bkt", prefix: "x/"}},
		{name: "mem", loc: "mem://", want: location{bucketURL: "mem://"}},
		{name: "mem name and prefix", loc: "mem://m/a", want: location{bucketURL: "mem://m", prefix: "a/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLocation(tt.loc)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("parseLocation(%q) = %+v, want %+v", tt.loc, got, tt.want)
			}
		})
	}
}
