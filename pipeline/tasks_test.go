package pipeline_test

import (
	"bytes"
	"context"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"github.com/fhirlake/fhirlake/sinks"
)

// subset is a Source of the named objects of dir.
func subset(t *testing.T, dir string, names ...string) pipeline.Source {
	t.Helper()
	b := openDir(t, dir)
	all, err := reader.List(context.Background(), b, "")
	if err != nil {
		t.Fatal(err)
	}
	src := pipeline.Source{Bucket: b, Name: "test:" + filepath.Base(dir)}
	for _, o := range all {
		if slices.Contains(names, o.Key) {
			src.Objects = append(src.Objects, o)
		}
	}
	if len(src.Objects) != len(names) {
		t.Skipf("%s lacks some of %v", dir, names)
	}
	return src
}

// runTasks runs every task of a plan of n tasks in turn (in the order given) and returns the manifest the last
// published.
func runTasks(t *testing.T, src pipeline.Source, dst *blob.Bucket, n int, splitBytes int64, order []int) (*pipeline.Plan, *sinks.Manifest) {
	t.Helper()
	return runTasksWith(t, src, dst, n, splitBytes, order, 0)
}

// runTasksWith is runTasks with Options.DedupeKeys set to dedupeKeys.
func runTasksWith(t *testing.T, src pipeline.Source, dst *blob.Bucket, n int, splitBytes int64, order []int, dedupeKeys int) (*pipeline.Plan, *sinks.Manifest) {
	t.Helper()
	ctx := context.Background()
	plan, err := pipeline.NewPlan(ctx, src, pipeline.PlanOptions{RunID: "r1", Tasks: n, SplitBytes: splitBytes})
	if err != nil {
		t.Fatal(err)
	}
	var m *sinks.Manifest
	for i, task := range order {
		res, err := pipeline.RunTask(ctx, src, pipeline.Sink{Bucket: dst, Prefix: "out"}, plan, task,
			pipeline.Options{Workers: 2, Allocator: checked(t), Now: fixedClock(), Validator: "fast", DedupeKeys: dedupeKeys})
		if err != nil {
			t.Fatalf("task %d: %v", task, err)
		}
		if last := i == len(order)-1; last != (res.Manifest != nil) {
			t.Fatalf("task %d (%d of %d): manifest %v", task, i+1, len(order), res.Manifest != nil)
		}
		m = res.Manifest
	}
	return plan, m
}

// sameOutput checks that two manifests publish the same rows in every table and the same counts.
func sameOutput(t *testing.T, a *blob.Bucket, ma *sinks.Manifest, b *blob.Bucket, mb *sinks.Manifest) {
	t.Helper()
	if ma.Totals.Lines != mb.Totals.Lines || ma.Totals.Valid != mb.Totals.Valid || ma.Totals.Rejected != mb.Totals.Rejected ||
		ma.Totals.Rows != mb.Totals.Rows || ma.Totals.Duplicates != mb.Totals.Duplicates || ma.Totals.Links != mb.Totals.Links {
		t.Errorf("totals %+v, want %+v", mb.Totals, ma.Totals)
	}
	if !slices.Equal(slices.Sorted(maps.Keys(ma.Resources)), slices.Sorted(maps.Keys(mb.Resources))) {
		t.Fatalf("types %v, want %v", slices.Sorted(maps.Keys(mb.Resources)), slices.Sorted(maps.Keys(ma.Resources)))
	}
	for typ, ra := range ma.Resources {
		rb := mb.Resources[typ]
		if ra.Valid != rb.Valid || ra.Rows != rb.Rows || ra.Duplicates != rb.Duplicates || ra.Links != rb.Links {
			t.Errorf("%s: %+v, want %+v", typ, rb, ra)
		}
		if !slices.Equal(tableRows(t, a, ra.Files), tableRows(t, b, rb.Files)) {
			t.Errorf("%s: the rows differ", typ)
		}
	}
	for i, in := range ma.Inputs {
		got := mb.Inputs[i]
		if in.Object != got.Object || in.Lines != got.Lines || in.Bytes != got.Bytes || in.Blocks != got.Blocks {
			t.Errorf("input %+v, want %+v", got, in)
		}
	}
}

func TestRunTasksSameAsRun(t *testing.T) {
	src := subset(t, filepath.Join(sharedData, "synthea-100"),
		"AllergyIntolerance.ndjson", "CarePlan.ndjson", "Condition.ndjson")
	ctx := context.Background()
	one := memBucket(t)
	want, err := pipeline.Run(ctx, src, pipeline.Sink{Bucket: one, Prefix: "out"},
		pipeline.Options{Workers: 2, Allocator: checked(t), Now: fixedClock(), Validator: "fast"})
	if err != nil {
		t.Fatal(err)
	}
	counts := []int{1, 3, 8}
	if testing.Short() {
		counts = []int{3}
	}
	for _, n := range counts {
		t.Run("tasks="+string(rune('0'+n)), func(t *testing.T) {
			spread := memBucket(t)
			order := make([]int, n)
			for i := range order {
				order[i] = n - 1 - i
			}
			plan, got := runTasks(t, src, spread, n, 64<<10, order)
			if len(plan.Splits) < 8 {
				t.Fatalf("%d splits, want at least 8", len(plan.Splits))
			}
			sameOutput(t, one, want, spread, got)
			// The published manifest lists every part of every task, and nothing else of ours is left.
			removed, err := sinks.RemoveStale(ctx, spread, "out", map[string]bool{})
			if err != nil {
				t.Fatal(err)
			}
			var listed int
			for _, rs := range got.Resources {
				listed += len(rs.Files)
			}
			if listed+len(got.Rejects)+len(got.PatientLinks) != len(removed) {
				t.Errorf("%d files of ours in the output, the manifest lists %d", len(removed), listed)
			}
		})
	}
}

// patientExcerpt writes Patient blocks from to to (1-based) of ../shared/data/synthea-group-by-patient to a
// directory. Blocks 5 to 13 (3.3 MB) share Organizations and Practitioners: 5 with 10, 6 with 11, 12 with 13.
func patientExcerpt(t *testing.T, from, to int) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(sharedData, "synthea-group-by-patient", "Patient.ndjson"))
	if err != nil {
		t.Skip(err)
	}
	var out []byte
	blocks := 0
	for l := range strings.SplitAfterSeq(string(data), "\n") {
		if strings.HasPrefix(l, `{"resourceType":"Patient"`) {
			if blocks++; blocks > to {
				break
			}
		}
		if blocks >= from {
			out = append(out, l...)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Patient.ndjson"), out, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRunTasksPerPatient spreads per-Patient data over tasks: the same tables, the same duplicates, and the same
// links (but for the line numbers of splits past byte 0, which are unknown there: 0).
func TestRunTasksPerPatient(t *testing.T) {
	if testing.Short() {
		t.Skip("3.3 MB of per-Patient data, twice")
	}
	src := subset(t, patientExcerpt(t, 5, 13), "Patient.ndjson")
	ctx := context.Background()
	one := memBucket(t)
	want, err := pipeline.Run(ctx, src, pipeline.Sink{Bucket: one, Prefix: "out"},
		pipeline.Options{Allocator: checked(t), Now: fixedClock(), Validator: "fast"})
	if err != nil {
		t.Fatal(err)
	}
	spread := memBucket(t)
	plan, got := runTasks(t, src, spread, 4, 256<<10, []int{2, 0, 3, 1})
	if len(plan.Splits) < 8 {
		t.Fatalf("%d splits, want at least 8", len(plan.Splits))
	}
	sameOutput(t, one, want, spread, got)
	if want.Totals.Duplicates == 0 {
		t.Fatal("the excerpt has no duplicates to remove")
	}
	// Some duplicates were in different tasks: the merge rewrote parts without them.
	if partsNamed(got, "-d-") == 0 {
		t.Error("no part rewritten by the merge: the test does not cover duplicates across tasks")
	}

	// The merge is idempotent: unpublished and merged again (as a second task merging at once would), it writes
	// the same objects, byte for byte.
	before := snapshot(t, spread, "out/")
	if err := sinks.Unpublish(ctx, spread, "out"); err != nil {
		t.Fatal(err)
	}
	res, err := pipeline.RunTask(ctx, src, pipeline.Sink{Bucket: spread, Prefix: "out"}, plan, 1,
		pipeline.Options{Allocator: checked(t), Now: fixedClock(), Validator: "fast"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.Manifest == nil {
		t.Fatalf("task run again: resumed %v, published %v", res.Resumed, res.Manifest != nil)
	}
	after := snapshot(t, spread, "out/")
	if !maps.EqualFunc(before, after, bytes.Equal) {
		t.Errorf("a second merge wrote other objects or bytes: %d objects before, %d after", len(before), len(after))
	}
	strip := func(ls []link) []link {
		for i := range ls {
			ls[i].Line = 0
		}
		slices.SortFunc(ls, func(a, b link) int {
			return cmpLink(a, b)
		})
		return ls
	}
	wl, gl := strip(readLinks(t, one, want)), strip(readLinks(t, spread, got))
	if !slices.EqualFunc(wl, gl, func(a, b link) bool { return cmpLink(a, b) == 0 }) {
		t.Errorf("%d links, want %d; they differ", len(gl), len(wl))
	}
}

// TestRunTasksBoundedDedupe: tasks that hold fewer per-Patient keys than their splits have publish what one
// process holding every key does: each task drops the copies it wrote past its bound (part-tNNNN-u-) before the
// merge drops those across tasks, and leaves no spilled keys behind.
func TestRunTasksBoundedDedupe(t *testing.T) {
	if testing.Short() {
		t.Skip("3.3 MB of per-Patient data, three times")
	}
	src := subset(t, patientExcerpt(t, 5, 13), "Patient.ndjson")
	one := memBucket(t)
	want, err := pipeline.Run(context.Background(), src, pipeline.Sink{Bucket: one, Prefix: "out"},
		pipeline.Options{Allocator: checked(t), Now: fixedClock(), Validator: "fast", DedupeKeys: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer pipeline.SetSpillKeys(97)()
	defer pipeline.SetMergeFan(3)()
	for _, bound := range []int{1, 400} {
		spread := memBucket(t)
		_, got := runTasksWith(t, src, spread, 2, 1<<20, []int{1, 0}, bound)
		sameOutput(t, one, want, spread, got)
		if bound == 1 && partsNamed(got, "-u-") == 0 {
			t.Error("no part rewritten by its task: the test does not cover copies within a task")
		}
		for k := range snapshot(t, spread, "out/_runs/") {
			if strings.Contains(k, ".spill-") {
				t.Errorf("bound %d: spilled keys left: %s", bound, k)
			}
		}
	}
}

// partsNamed counts the parts m publishes whose name holds s.
func partsNamed(m *sinks.Manifest, s string) int {
	n := 0
	for _, rs := range m.Resources {
		for _, f := range rs.Files {
			if strings.Contains(f.Key, s) {
				n++
			}
		}
	}
	return n
}

func cmpLink(a, b link) int {
	for _, c := range [][2]string{{a.PatientID, b.PatientID}, {a.ResourceType, b.ResourceType}, {a.ResourceID, b.ResourceID},
		{a.Source, b.Source}} {
		if c[0] != c[1] {
			if c[0] < c[1] {
				return -1
			}
			return 1
		}
	}
	va, vb := "", ""
	if a.ResourceVersion != nil {
		va = *a.ResourceVersion
	}
	if b.ResourceVersion != nil {
		vb = *b.ResourceVersion
	}
	switch {
	case va != vb && va < vb:
		return -1
	case va != vb:
		return 1
	}
	return int(a.Position - b.Position)
}

// snapshot is every object under prefix, by key.
func snapshot(t *testing.T, b *blob.Bucket, prefix string) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	out := map[string][]byte{}
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if out[obj.Key], err = b.ReadAll(ctx, obj.Key); err != nil {
			t.Fatal(err)
		}
	}
}
