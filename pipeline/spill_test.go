package pipeline_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
)

// TestRunBoundedDedupe: a run that holds fewer per-Patient keys than the export has writes the same tables and
// counts as one that holds them all: it spills the keys past its bound to the bucket, rewrites the parts of the
// types whose resources it wrote twice (part-d-), and leaves none of the spilled keys behind.
func TestRunBoundedDedupe(t *testing.T) {
	if testing.Short() {
		t.Skip("3.3 MB of per-Patient data, four times")
	}
	dir := patientExcerpt(t, 5, 13)
	one := memBucket(t)
	want := runDir(t, dir, one, pipeline.Options{Workers: 2, Validator: "fast", DedupeKeys: -1})
	if want.Totals.Duplicates == 0 {
		t.Fatal("the excerpt has no duplicates to remove")
	}
	defer pipeline.SetSpillKeys(97)() // several spill files per type,
	defer pipeline.SetMergeFan(3)()   // merged three at a time
	for _, bound := range []int{1, 300, 3000} {
		b := memBucket(t)
		var last pipeline.Progress
		got := runDir(t, dir, b, pipeline.Options{Workers: 2, Validator: "fast", DedupeKeys: bound,
			Progress: func(p pipeline.Progress) { last = p }})
		sameOutput(t, one, want, b, got)
		if last.DedupeKeys > int64(bound)+2 { // two decoders may each add one past the bound
			t.Errorf("bound %d: the run held %d keys", bound, last.DedupeKeys)
		}
		// Every line of the excerpt has an id: those past the bound, duplicates aside, were spilled.
		if spilled := got.Totals.Lines - last.DedupeKeys - got.Totals.Duplicates; last.DedupeSpilled < spilled {
			t.Errorf("bound %d: %d keys spilled, want at least %d", bound, last.DedupeSpilled, spilled)
		}
		if bound == 1 && partsNamed(got, "/part-d-") == 0 {
			t.Errorf("bound %d: no part rewritten: the test does not cover duplicates past the bound", bound)
		}
		// The parts the rewritten ones replace are gone from the bucket.
		for typ, rs := range got.Resources {
			var want []string
			for _, f := range rs.Files {
				want = append(want, "out/"+f.Key)
			}
			slices.Sort(want)
			if objs := listKeys(t, b, "out/"+typ+"/"); !slices.Equal(objs, want) {
				t.Errorf("bound %d: %s holds %v, the manifest lists %v", bound, typ, objs, want)
			}
		}
		if left := listKeys(t, b, "out/_dedupe"); len(left) != 0 {
			t.Errorf("bound %d: spilled keys left behind: %v", bound, left)
		}
		wl, gl := readLinks(t, one, want), readLinks(t, b, got)
		if len(wl) != len(gl) {
			t.Errorf("bound %d: %d links, want %d", bound, len(gl), len(wl))
		}
	}
}

// TestRunBoundedDedupeSmall: the malformed blocks fixture (three copies of one Organization) gives the same
// totals with a bound of one key, and a run finds and removes what a run that died left, this version or the one
// before it (under _dedupe/).
func TestRunBoundedDedupeSmall(t *testing.T) {
	b := memBucket(t)
	for _, stale := range []string{"out/_dedupe-1-Organization-00000", "out/_dedupe/1-Organization-00000"} {
		if err := b.WriteAll(context.Background(), stale, make([]byte, 16), nil); err != nil {
			t.Fatal(err)
		}
	}
	dir := malformedBlocks(t)
	for _, layout := range []reader.Layout{reader.LayoutAuto, reader.LayoutPatient} {
		m := runDir(t, dir, b, pipeline.Options{Workers: 2, Layout: layout, DedupeKeys: 1})
		if m.Totals.Duplicates != 2 || m.Totals.Rows != 9 || m.Totals.Links != 10 {
			t.Errorf("%s: totals %+v, want 2 duplicates, 9 rows, 10 links", layout, m.Totals)
		}
		if o := m.Resources["Organization"]; o.Rows != 1 || o.Duplicates != 2 {
			t.Errorf("%s: Organization = %+v, want 1 row and 2 duplicates", layout, o)
		}
		if left := listKeys(t, b, "out/_dedupe"); len(left) != 0 {
			t.Errorf("%s: left under _dedupe: %v", layout, left)
		}
	}
}

// TestRunBoundedDedupePrefixSlash: a sink prefix given with a trailing slash names the same objects as without
// it, for the spilled keys too: the run removes what it spilled.
func TestRunBoundedDedupePrefixSlash(t *testing.T) {
	b := memBucket(t)
	dir := malformedBlocks(t)
	m, err := pipeline.Run(context.Background(), pipeline.Source{Bucket: openDir(t, dir), Name: dir},
		pipeline.Sink{Bucket: b, Prefix: "out/"}, pipeline.Options{Workers: 2, Layout: reader.LayoutPatient, DedupeKeys: 1,
			Allocator: checked(t), Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if m.Totals.Duplicates != 2 || m.Totals.Rows != 9 {
		t.Errorf("totals %+v, want 2 duplicates and 9 rows", m.Totals)
	}
	if left := listKeys(t, b, "out/_dedupe"); len(left) != 0 {
		t.Errorf("left under _dedupe: %v", left)
	}
	if all := listKeys(t, b, "out//"); len(all) != 0 {
		t.Errorf("objects under a doubled slash: %v", all)
	}
}

// TestRunBoundedDedupeLocal: a run past its bound into a local directory leaves nothing of its spilled keys there,
// not even an empty directory (fileblob leaves the directories of the files it deletes).
func TestRunBoundedDedupeLocal(t *testing.T) {
	out := t.TempDir()
	m := runDir(t, malformedBlocks(t), openDir(t, out), pipeline.Options{Workers: 2, Layout: reader.LayoutPatient, DedupeKeys: 1})
	if m.Totals.Duplicates != 2 {
		t.Fatalf("totals %+v, want 2 duplicates: the run did not go past its bound", m.Totals)
	}
	entries, err := os.ReadDir(filepath.Join(out, "out"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "_dedupe") {
			t.Errorf("left in the output: %s", e.Name())
		}
	}
}
