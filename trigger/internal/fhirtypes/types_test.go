package fhirtypes

import (
	"testing"

	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
)

func TestKnownMatchesContainedResource(t *testing.T) {
	oneof := (&bcrpb.ContainedResource{}).ProtoReflect().Descriptor().Oneofs().ByName("oneof_resource")
	if oneof == nil {
		t.Fatal("ContainedResource has no oneof_resource")
	}
	want := map[string]bool{}
	fields := oneof.Fields()
	for i := 0; i < fields.Len(); i++ {
		want[string(fields.Get(i).Message().Name())] = true
	}
	for name := range want {
		if !Known(name) {
			t.Errorf("Known(%q) = false, want true", name)
		}
	}
	all := All()
	if len(all) != len(want) {
		t.Errorf("All() has %d names, ContainedResource %d", len(all), len(want))
	}
	for _, name := range all {
		if !want[name] {
			t.Errorf("%q is not a ContainedResource type", name)
		}
	}
}

func TestKnown(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{name: "patient", in: "Patient", want: true},
		{name: "lower case", in: "patient", want: false},
		{name: "empty", in: "", want: false},
		{name: "abstract", in: "DomainResource", want: false},
		{name: "R5 only", in: "SubscriptionTopic", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Known(tt.in); got != tt.want {
				t.Errorf("Known(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
