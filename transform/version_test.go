package transform

import (
	"testing"

	"github.com/apache/arrow/go/v17/arrow/memory"
)

func TestValidateVersion(t *testing.T) {
	v, err := NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		line string
		want string
	}{
		{name: "no meta", line: `{"resourceType":"Patient","id":"p"}`, want: ""},
		{name: "versionId", line: `{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00Z"}}`, want: "3"},
		{name: "versionId after lastUpdated", line: `{"meta":{"lastUpdated":"2024-01-01T00:00:00Z","versionId":"7"},"resourceType":"Patient"}`, want: "7"},
		{name: "lastUpdated only", line: `{"resourceType":"Patient","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}`, want: "2024-01-01T00:00:00Z"},
		{name: "nested values are skipped", line: `{"resourceType":"Patient","meta":{"tag":[{"code":"versionId"}],"security":[{"system":"x"}],"versionId":"a\u0062"}}`, want: "ab"},
		{name: "meta of a contained resource is not the line's", line: `{"resourceType":"Patient","contained":[{"resourceType":"Organization","meta":{"versionId":"9"}}]}`, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := v.Validate([]byte(tt.line)).Version; got != tt.want {
				t.Errorf("Version = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestWorkerValidateAppend: Validate converts nothing; Append of what Validate accepted adds exactly one row.
func TestWorkerValidateAppend(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	w, err := NewWorker(testRegistry(t), Options{Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Release()
	line := []byte(`{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"}}`)
	r := w.Validate(line)
	if !r.Valid || r.ID != "p1" || r.Version != "2" {
		t.Fatalf("Validate = %+v", r)
	}
	if w.Pending() != 0 {
		t.Fatalf("Validate appended %d rows", w.Pending())
	}
	if err := w.Append(line, r); err != nil {
		t.Fatal(err)
	}
	bad := w.Validate([]byte(`{"resourceType":"Patient","birthDate":"x"}`))
	if err := w.Append([]byte(`{}`), bad); err == nil {
		t.Error("Append of an invalid result succeeded")
	}
	if w.Pending() != 1 {
		t.Errorf("pending = %d, want 1", w.Pending())
	}
	recs, err := w.Flush(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		rec.Release()
	}
}
