package schema_test

import (
	"fmt"
	"strings"

	"github.com/fhirlake/fhirlake/schema"
)

func ExampleNew() {
	reg, err := schema.New(schema.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	res, _ := reg.Resource("Patient")
	fmt.Println(len(reg.Types()), "resource types")
	inDeceased := false
	for _, line := range strings.Split(schema.Format(res.Schema), "\n") {
		top := !strings.HasPrefix(line, " ")
		if top {
			inDeceased = strings.HasPrefix(line, "deceased:")
		}
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, "birthDate:") || inDeceased ||
			strings.HasPrefix(line, "_primitiveExtensions:") {
			fmt.Println(line)
		}
	}
	// Output:
	// 146 resource types
	// # fhir.resource_type = Patient
	// # fhir.version = 4.0.1
	// # fhirlake.recursion_depth = 2
	// # fhirlake.schema_version = 1
	// birthDate: utf8
	// deceased: struct
	//   boolean: bool
	//   dateTime: utf8
	// _primitiveExtensions: utf8
}
