package trigger_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

// sharedData is ../shared/data seen from the repository root.
const sharedData = "../../shared/data"

// TestGroupByPatientSynthea exports Group BlueCrossBlueShield of synthea-100, organised by Patient, and compares it
// with synthea-group-by-patient, the layout the real service produces.
func TestGroupByPatientSynthea(t *testing.T) {
	src := filepath.Join(sharedData, "synthea-100")
	model := filepath.Join(sharedData, "synthea-group-by-patient")
	if _, err := os.Stat(src); err != nil {
		t.Fatalf("shared test data missing: %v", err)
	}
	ctx := context.Background()
	e := newEnv(t, src, healthcaretest.Options{Polls: 1}, trigger.Options{})
	h, err := e.client.Start(ctx, trigger.Request{Kind: trigger.KindGroup, Store: e.fake.StoreName(), Group: "BlueCrossBlueShield", ByPatient: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.client.Wait(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Objects) != 2 {
		t.Fatalf("objects %+v, want the Group and the Patient files", out.Objects)
	}
	group, patients := out.Objects[0], out.Objects[1]
	if group.ResourceType != "Group" || group.Layout != trigger.LayoutType ||
		patients.ResourceType != "" || patients.Layout != trigger.LayoutPatient {
		t.Fatalf("objects %+v", out.Objects)
	}

	got := e.lines(t, patients.Key)
	want := readLines(t, filepath.Join(model, "Patient.ndjson"))
	if len(got) != 10655 || len(want) != 10655 {
		t.Errorf("Patient file has %d lines, model %d; want 10655", len(got), len(want))
	}
	distinct, types := map[string]bool{}, map[string]bool{}
	for _, l := range got {
		distinct[string(l)] = true
		types[resourceType(t, l)] = true
	}
	if len(distinct) != 10641 || len(types) != 17 {
		t.Errorf("%d distinct lines in %d types, want 10641 in 17", len(distinct), len(types))
	}
	gotBlocks, wantBlocks := blocks(t, got), blocks(t, want)
	if len(gotBlocks) != 27 || len(wantBlocks) != 27 {
		t.Fatalf("%d Patient blocks, model %d; want 27", len(gotBlocks), len(wantBlocks))
	}
	for i := range wantBlocks {
		g, w := gotBlocks[i], wantBlocks[i]
		if !bytes.Equal(g[0], w[0]) {
			t.Errorf("block %d starts with another Patient than the model", i)
			continue
		}
		// The same resources, verbatim, in the same sequence of types. Within a type, the order of referenced
		// resources (Organization, Practitioner) is the service's own and is not reproduced.
		if !reflect.DeepEqual(typeRuns(t, g), typeRuns(t, w)) {
			t.Errorf("block %d types %v, model %v", i, typeRuns(t, g), typeRuns(t, w))
		}
		if !reflect.DeepEqual(sortedStrings(g), sortedStrings(w)) {
			t.Errorf("block %d holds other resources than the model (%d lines, model %d)", i, len(g), len(w))
		}
	}
	if g, w := e.lines(t, group.Key), readLines(t, filepath.Join(model, "Group.ndjson")); !reflect.DeepEqual(g, w) {
		t.Errorf("Group file differs from the model")
	}
}

func readLines(t *testing.T, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
}

// typeOf memoises resourceType: each line is asked for several times.
var typeOf sync.Map

func resourceType(t *testing.T, line []byte) string {
	t.Helper()
	if rt, ok := typeOf.Load(string(line)); ok {
		return rt.(string)
	}
	var r struct{ ResourceType string }
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("line is not JSON: %v", err)
	}
	typeOf.Store(string(line), r.ResourceType)
	return r.ResourceType
}

// blocks splits Patient-file lines at each Patient.
func blocks(t *testing.T, lines [][]byte) [][][]byte {
	var out [][][]byte
	for _, l := range lines {
		if resourceType(t, l) == "Patient" || len(out) == 0 {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], l)
	}
	return out
}

// run is a stretch of lines of one resource type.
type run struct {
	Type  string
	Lines int
}

// typeRuns is the sequence of resource types of a block, as runs.
func typeRuns(t *testing.T, block [][]byte) []run {
	var out []run
	for _, l := range block {
		rt := resourceType(t, l)
		if len(out) > 0 && out[len(out)-1].Type == rt {
			out[len(out)-1].Lines++
			continue
		}
		out = append(out, run{Type: rt, Lines: 1})
	}
	return out
}

func sortedStrings(lines [][]byte) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = string(l)
	}
	slices.Sort(out)
	return out
}
