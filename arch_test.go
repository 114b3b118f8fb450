package fhirlake_test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestImportDirection keeps the one-way flow of STYLE.md: cmd -> trigger, pipeline; pipeline -> reader,
// transform, sinks; transform, sinks -> schema. No stage imports a sibling stage.
func TestImportDirection(t *testing.T) {
	const module = "github.com/fhirlake/fhirlake/"
	allowed := map[string][]string{
		"cmd/fhirlake": {"trigger", "pipeline", "reader", "sinks", "schema", "transform"},
		"pipeline":     {"reader", "transform", "sinks", "schema"},
		"transform":    {"schema"},
		"sinks":        {"schema"},
		"trigger":      {},
		"reader":       {},
		"schema":       {},
	}
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkg := strings.TrimPrefix(variantless(p.ImportPath), module)
		top := pkg
		if i := strings.Index(pkg, "/"); i > 0 && !strings.HasPrefix(pkg, "cmd/") {
			top = pkg[:i] // a sub-package (e.g. trigger/healthcaretest) follows its parent's rule
		}
		rule, ok := allowed[top]
		if !ok {
			continue
		}
		seen++
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			dep := strings.TrimPrefix(variantless(imp), module)
			depTop := dep
			if i := strings.Index(dep, "/"); i > 0 {
				depTop = dep[:i]
			}
			if depTop == top {
				continue
			}
			if !slices.Contains(rule, depTop) {
				t.Errorf("%s imports %s: the flow allows %s -> %v only", pkg, dep, top, rule)
			}
		}
	}
	if seen == 0 {
		t.Fatal("go list found none of the stage packages")
	}
}

// variantless drops the " [main package]" go list appends to the packages it builds for one command only, as it
// does for the dependencies of a command with a default.pgo.
func variantless(importPath string) string {
	if i := strings.Index(importPath, " ["); i >= 0 {
		return importPath[:i]
	}
	return importPath
}
