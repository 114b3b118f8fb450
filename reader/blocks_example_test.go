package reader_test

import (
	"fmt"
	"strings"

	"github.com/fhirlake/fhirlake/reader"
)

// A per-Patient object read in blocks: every line carries its block, the block's Patient and its position.
func ExampleBlockScanner() {
	ndjson := `{"resourceType":"Patient","id":"a"}
{"resourceType":"Observation","id":"o1"}
{"resourceType":"Organization","id":"org"}
{"resourceType":"Patient","id":"b"}
{"resourceType":"Organization","id":"org"}
`
	sc := reader.NewScanner(strings.NewReader(ndjson), "Patient.ndjson", reader.Options{})
	bs := reader.NewBlockScanner(sc, reader.BlockOptions{}) // auto: decided from the first lines
	for bs.Scan() {
		l := bs.Line()
		fmt.Printf("line %d: block %d of Patient %s, position %d\n", l.Number, l.Block, l.Patient, l.Position)
	}
	issues, _ := bs.Issues()
	fmt.Println(bs.Layout(), bs.Blocks(), "blocks,", len(issues), "issues")
	// Output:
	// line 1: block 1 of Patient a, position 0
	// line 2: block 1 of Patient a, position 1
	// line 3: block 1 of Patient a, position 2
	// line 4: block 2 of Patient b, position 0
	// line 5: block 2 of Patient b, position 1
	// per-patient 2 blocks, 0 issues
}
