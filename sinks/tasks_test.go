package sinks

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
)

func TestTaskRecordsAndKeys(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	recs, err := ReadTaskRecords(ctx, b, "out", "r")
	if err != nil || len(recs) != 0 {
		t.Fatalf("no records yet: %v, %v", recs, err)
	}
	keys := []Key{{3, 1}, {1, 9}, {1, 2}}
	rel, err := TaskKeysFile("r", 2, "Organization")
	if err != nil {
		t.Fatal(err)
	}
	f, err := WriteKeyFile(ctx, b, "out", rel, keys)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TaskKeysFile("r", 2, "../Organization"); err == nil {
		t.Error("a task's key file for a type that is no type name")
	}
	for _, task := range []int{2, 0} {
		rec := &TaskRecord{RunID: "r", Task: task, Tasks: 3, Plan: "p", Keys: map[string]File{"Organization": f}}
		rec.Manifest.Totals.Lines = int64(10 + task)
		if err := WriteTaskRecord(ctx, b, "out", rec); err != nil {
			t.Fatal(err)
		}
	}
	recs, err = ReadTaskRecords(ctx, b, "out", "r")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Task != 0 || recs[1].Task != 2 || recs[1].Manifest.Totals.Lines != 12 {
		t.Fatalf("records = %+v", recs)
	}
	tests := []struct {
		name  string
		tasks int
		plan  string
		want  bool
	}{
		{name: "one missing", tasks: 3, plan: "p", want: false},
		{name: "all of two", tasks: 2, plan: "p", want: false}, // task 2 is outside a plan of two; task 1 missing
		{name: "another plan", tasks: 3, plan: "q", want: false},
	}
	for _, tt := range tests {
		if got := RecordsComplete(recs, tt.tasks, tt.plan); got != tt.want {
			t.Errorf("%s: RecordsComplete = %v, want %v", tt.name, got, tt.want)
		}
	}
	rec := &TaskRecord{RunID: "r", Task: 1, Tasks: 3, Plan: "p"}
	if err := WriteTaskRecord(ctx, b, "out", rec); err != nil {
		t.Fatal(err)
	}
	if recs, _ = ReadTaskRecords(ctx, b, "out", "r"); !RecordsComplete(recs, 3, "p") {
		t.Errorf("three records of plan p are not complete: %d", len(recs))
	}
	got, err := readKeys(ctx, b, "out", recs[2].Keys["Organization"])
	if err != nil {
		t.Fatal(err)
	}
	if want := []Key{{1, 2}, {1, 9}, {3, 1}}; !slices.Equal(got, want) {
		t.Errorf("keys = %v, want %v (sorted)", got, want)
	}
}

// readKeys reads a key file whole through a KeyReader.
func readKeys(ctx context.Context, b *blob.Bucket, out string, f File) ([]Key, error) {
	r, err := OpenKeys(ctx, b, out, f)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var keys []Key
	for {
		k, ok, err := r.Next()
		if err != nil || !ok {
			return keys, err
		}
		keys = append(keys, k)
	}
}

// TestKeyReaderRefusesDamage: a key file cut short of a whole key, or whose keys are out of order, is an error
// naming the file, not keys a merge would take as sorted.
func TestKeyReaderRefusesDamage(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	key := func(a, b uint64) []byte {
		return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, a), b)
	}
	for _, tc := range []struct {
		name, want string
		data       []byte
	}{
		{"cut", "the 3 bytes at byte 16 are not a whole key", append(key(1, 1), 0, 0, 0)},
		{"unsorted", "the key at byte 32 is out of order", slices.Concat(key(1, 1), key(2, 0), key(1, 9))},
	} {
		f := File{Key: "_runs/r/tasks/0.keys/" + tc.name}
		if err := b.WriteAll(ctx, "out/"+f.Key, tc.data, nil); err != nil {
			t.Fatal(err)
		}
		keys, err := readKeys(ctx, b, "out", f)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), f.Key) {
			t.Errorf("%s: %v, %v; want an error naming %s: %q", tc.name, keys, err, f.Key, tc.want)
		}
	}
	if _, err := readKeys(ctx, b, "out", File{Key: "_runs/r/tasks/0.keys/Gone"}); err == nil {
		t.Error("a missing key file was read")
	}
}

func TestCreatePlan(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	if _, err := ReadPlan(ctx, b, "out", "r"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no plan yet: %v", err)
	}
	first, err := CreatePlan(ctx, b, "out", "r", []byte(`{"a":1}`))
	if err != nil || string(first) != `{"a":1}` {
		t.Fatalf("first plan: %s, %v", first, err)
	}
	second, err := CreatePlan(ctx, b, "out", "r", []byte(`{"a":2}`))
	if err != nil || string(second) != `{"a":1}` {
		t.Errorf("second plan: %s, %v; want the first one stored", second, err)
	}
}

func TestTaskRejectsNames(t *testing.T) {
	ctx := context.Background()
	b := memblob.OpenBucket(nil)
	defer b.Close()
	r := NewTaskRejects(b, "out", 7)
	if err := r.Write(ctx, Reject{Source: "o", Offset: 120, ResourceType: "Patient", Known: true, Raw: []byte("{}")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := r.Write(ctx, Reject{Source: "o", Line: 3, Offset: 9, Raw: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	files, err := r.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, f := range files {
		keys = append(keys, f.Key)
	}
	if want := []string{"_rejects/Patient-t0007.ndjson", "_rejects/_unparsed-t0007.ndjson", "_rejects/errors-t0007.ndjson"}; !slices.Equal(keys, want) {
		t.Errorf("files %v, want %v", keys, want)
	}
	data, err := b.ReadAll(ctx, "out/_rejects/errors-t0007.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"source":"o","line":0,"offset":120,"resourceType":"Patient","issues":[]}` + "\n" +
		`{"source":"o","line":3,"resourceType":"","issues":[]}` + "\n"
	if string(data) != want {
		t.Errorf("errors file:\n%s\nwant (an offset only where the line is unknown)\n%s", data, want)
	}
}
