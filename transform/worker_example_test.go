package transform_test

import (
	"fmt"

	"github.com/fhirlake/fhirlake/schema"
	"github.com/fhirlake/fhirlake/transform"
)

func ExampleWorker() {
	reg, err := schema.New(schema.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	w, err := transform.NewWorker(reg, transform.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Release()
	lines := []string{
		`{"resourceType":"Patient","id":"p1","birthDate":"1974-12","deceasedBoolean":false}`,
		`{"resourceType":"Patient","id":"p2","gender":"sometimes"}`,
	}
	for _, line := range lines {
		res, err := w.Process([]byte(line))
		if err != nil {
			fmt.Println(err) // internal failure: stop the run
			return
		}
		fmt.Println(res.ResourceType, res.ID, "valid:", res.Valid)
	}
	recs, err := w.Flush(0)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, rec := range recs {
		typ, _ := rec.Schema().Metadata().GetValue(schema.MetaResourceType)
		fmt.Println(typ, rec.NumRows(), "row(s)")
		rec.Release()
	}
	// Output:
	// Patient p1 valid: true
	// Patient p2 valid: false
	// Patient 1 row(s)
}
