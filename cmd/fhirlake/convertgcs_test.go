package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"gocloud.dev/blob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/memblob"
	"google.golang.org/api/option"
)

const (
	convertInBucket  = "in"
	convertOutBucket = "lake"
)

// convertGCS is a fake Cloud Storage for `fhirlake convert` over gs:// locations: the embedded sample, plus an
// object with a line that is not JSON and one that is not valid FHIR, under gs://in/export/, and an empty
// gs://lake, reached through a faultProxy.
type convertGCS struct {
	srv   *fakestorage.Server
	proxy *faultProxy
	url   string
}

func newConvertGCS(t *testing.T) *convertGCS {
	t.Helper()
	var objs []fakestorage.Object
	err := eachSampleFile(func(name string, data []byte) error {
		objs = append(objs, fakeObject("export/"+name, data))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	objs = append(objs, fakeObject("export/Damaged.ndjson",
		[]byte("{not json\n{\"resourceType\":\"Patient\",\"id\":\"p-bad\",\"gender\":42}\n")))
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{NoListener: true, Writer: io.Discard, InitialObjects: objs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: convertOutBucket})
	g := &convertGCS{srv: srv}
	g.proxy, g.url = newFaultProxy(t, srv.HTTPHandler())
	return g
}

func fakeObject(name string, data []byte) fakestorage.Object {
	return fakestorage.Object{ObjectAttrs: fakestorage.ObjectAttrs{BucketName: convertInBucket, Name: name}, Content: data}
}

// openGCS opens buckets through the proxy on the storage client the worker uses (newGCSClient), with testGCS's
// short waits.
func (g *convertGCS) openGCS(t *testing.T) openGCSFunc {
	t.Helper()
	opts := testGCS
	opts.Endpoint = g.url + "/storage/v1/"
	gcs := &gcsBuckets{opts: opts}
	t.Cleanup(gcs.Close)
	return gcs.open
}

// openClient is a storage client of the fake past the proxy.
func (g *convertGCS) openClient(t *testing.T) *storage.Client {
	t.Helper()
	c, err := storage.NewClient(context.Background(), option.WithHTTPClient(g.srv.HTTPClient()),
		option.WithoutAuthentication(), storage.WithJSONReads())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// published is the run published under gs://lake/prefix, read past the proxy.
func (g *convertGCS) published(t *testing.T, prefix string) published {
	t.Helper()
	ctx := context.Background()
	b, err := gcsblob.OpenBucket(ctx, nil, convertOutBucket, &gcsblob.Options{Client: g.openClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return readPublished(t, b, prefix)
}

// convertGCSConfig converts gs://in/export into gs://lake/out.
func convertGCSConfig() convertConfig {
	return convertConfig{
		In: "gs://" + convertInBucket + "/export", Out: "gs://" + convertOutBucket + "/out",
		Workers: 2, MaxLineBytes: 1 << 20, RecursionDepth: 2,
	}
}

// faultsInjected counts the requests the proxy broke.
func faultsInjected(p *faultProxy) int {
	n := 0
	for _, r := range p.requests() {
		if r.Fault != "" {
			n++
		}
	}
	return n
}

// TestConvertGCSTransientFaults: `fhirlake convert` with gs:// input and output reads and writes on the storage
// client the worker uses, so that Cloud Storage calls failing now and then, including those gocloud's default
// client does not retry (an upload answered 503 or reset, an upload's answer cut short), still publish what a run
// without faults publishes, with every line counted.
func TestConvertGCSTransientFaults(t *testing.T) {
	ctx := context.Background()
	clean := newConvertGCS(t)
	var log bytes.Buffer
	if err := convert(ctx, convertGCSConfig(), clean.openGCS(t), slog.New(slog.NewTextHandler(&log, nil)), io.Discard); err != nil {
		t.Fatalf("clean run: %v\n%s", err, log.String())
	}
	want := clean.published(t, "out")
	if tot := want.Totals; tot.Lines == 0 || tot.Rejected == 0 || tot.Valid == 0 || tot.Lines != tot.Valid+tot.Rejected ||
		tot.Rows != tot.Valid || want.Inputs != 11 {
		t.Fatalf("clean run published %+v from %d objects; want 11 objects, valid and rejected lines, all counted", tot, want.Inputs)
	}

	tests := []struct {
		name  string
		rules []faultRule
	}{
		{name: "503 on reads", rules: []faultRule{{Op: "read", Nth: 2, Kind: "503"}, {Op: "read", Nth: 5, Kind: "503"}}},
		{name: "reset before a read answers", rules: []faultRule{{Op: "read", Nth: 1, Kind: "reset"}, {Op: "read", Nth: 4, Kind: "reset"}}},
		{name: "reset mid-body", rules: []faultRule{{Op: "read", Object: "Observation", Nth: 1, Kind: "reset-mid-body"}}},
		{name: "body truncated", rules: []faultRule{{Op: "read", Object: "Patient", Nth: 1, Kind: "truncate"}}},
		{name: "429 on the listing", rules: []faultRule{{Op: "list", Nth: 1, Kind: "429"}}},
		{name: "503 on a Parquet upload", rules: []faultRule{{Op: "write", Object: "part-", Nth: 1, Kind: "503"}}},
		{name: "reset on an upload", rules: []faultRule{{Op: "write", Object: "part-", Nth: 2, Kind: "reset"}}},
		{name: "manifest upload answer cut short", rules: []faultRule{{Op: "write", Object: "_manifest.json", Nth: 1, Kind: "truncate"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newConvertGCS(t)
			g.proxy.set(tc.rules...)
			var log, stdout bytes.Buffer
			if err := convert(ctx, convertGCSConfig(), g.openGCS(t), slog.New(slog.NewTextHandler(&log, nil)), &stdout); err != nil {
				t.Fatalf("convert: %v\n%s", err, log.String())
			}
			if got := g.published(t, "out"); !got.equal(want) {
				t.Errorf("published %+v\nwant %+v", got, want)
			}
			if n := faultsInjected(g.proxy); n != len(tc.rules) {
				t.Errorf("%d faults injected, want %d: %+v", n, len(tc.rules), g.proxy.requests())
			}
		})
	}
}

// TestConvertCommandGCSClient: the convert command itself (not only convert given a client) opens gs:// locations
// on newGCSClient with production's settings: reached through STORAGE_EMULATOR_HOST, a run whose first Parquet
// upload is answered 503, which gocloud's default client would not retry, publishes in full.
func TestConvertCommandGCSClient(t *testing.T) {
	g := newConvertGCS(t)
	t.Setenv("STORAGE_EMULATOR_HOST", strings.TrimPrefix(g.url, "http://")) // host:port, as gocloud too reads it
	g.proxy.set(faultRule{Op: "write", Object: "part-", Nth: 1, Kind: "503"})
	c := convertGCSConfig()
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"convert", "--in", c.In, "--out", c.Out, "--workers", "2"}, env(nil), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
	}
	got := g.published(t, "out")
	if tot := got.Totals; tot.Lines == 0 || tot.Lines != tot.Valid+tot.Rejected || got.Inputs != 11 {
		t.Errorf("published %+v from %d objects", tot, got.Inputs)
	}
	if n := faultsInjected(g.proxy); n != 1 {
		t.Errorf("%d faults injected, want 1: %+v", n, g.proxy.requests())
	}
}

// TestConvertGCSPersistentFault: a Cloud Storage fault that outlasts the retries fails convert, naming what it was
// doing, and publishes nothing.
func TestConvertGCSPersistentFault(t *testing.T) {
	tests := []struct {
		name string
		rule faultRule
		want string // in the error
	}{
		{name: "input unreadable", rule: faultRule{Op: "read", Bucket: convertInBucket, Kind: "503"}, want: "503"},
		{name: "Parquet uploads refused", rule: faultRule{Op: "write", Object: "part-", Kind: "503"}, want: "retry budget"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newConvertGCS(t)
			g.proxy.set(tc.rule)
			var log bytes.Buffer
			err := convert(context.Background(), convertGCSConfig(), g.openGCS(t), slog.New(slog.NewTextHandler(&log, nil)), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
			g.proxy.set()
			b, err := gcsblob.OpenBucket(context.Background(), nil, convertOutBucket, &gcsblob.Options{Client: g.openClient(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if ok, err := b.Exists(context.Background(), "out/_manifest.json"); ok || err != nil {
				t.Errorf("manifest exists (%v, %v) after a failed convert", ok, err)
			}
		})
	}
}

// TestOpenLocation: gs:// locations are opened by the given opener, with their bucket name and prefix; the others
// as reader.OpenBucket opens them.
func TestOpenLocation(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name       string
		loc        string
		wantBucket string // the name the opener got; "" when it must not be called
		wantPrefix string
		wantErr    string
	}{
		{name: "bucket and prefix", loc: "gs://b/a/c", wantBucket: "b", wantPrefix: "a/c/"},
		{name: "prefix with a slash", loc: "gs://b/a/", wantBucket: "b", wantPrefix: "a/"},
		{name: "whole bucket", loc: "gs://b", wantBucket: "b"},
		{name: "scheme in capitals", loc: "GS://b/x", wantBucket: "b", wantPrefix: "x/"},
		{name: "no bucket", loc: "gs:///x", wantErr: "no bucket name"},
		{name: "query parameters", loc: "gs://b/x?anonymous=true", wantErr: "no query parameters"},
		{name: "mem", loc: "mem://m/p", wantPrefix: "p/"},
		{name: "directory", loc: dir},
		{name: "file URL", loc: "file://" + dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opened string
			open := func(ctx context.Context, name string) (*blob.Bucket, error) {
				opened = name
				return memblob.OpenBucket(nil), nil
			}
			b, prefix, err := openLocation(context.Background(), open, tt.loc)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
				if opened != "" {
					t.Errorf("opener called with %q", opened)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if opened != tt.wantBucket || prefix != tt.wantPrefix {
				t.Errorf("opener got %q, prefix %q; want %q, %q", opened, prefix, tt.wantBucket, tt.wantPrefix)
			}
		})
	}
}
