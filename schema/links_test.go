package schema

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLinksGolden(t *testing.T) {
	got := Format(Links())
	path := filepath.Join("testdata", "_patient_links.schema.txt")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("links schema differs from %s; run go test ./schema -update and review the diff:\n%s", path, got)
	}
	if !Links().Equal(Links()) {
		t.Error("Links() is not stable")
	}
}
