package transform

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDupKeys(t *testing.T) {
	wide := func(dupAt int) string {
		var b strings.Builder
		b.WriteString(`{"resourceType":"Basic"`)
		for i := range 200_000 {
			fmt.Fprintf(&b, `,"k%d":1`, i)
		}
		if dupAt >= 0 {
			fmt.Fprintf(&b, `,"k%d":2`, dupAt)
		}
		b.WriteString("}")
		return b.String()
	}
	tests := []struct {
		name          string
		line          string
		found, onType bool
	}{
		{name: "none", line: `{"resourceType":"Patient","id":"a","name":[{"family":"x"}]}`},
		{name: "empty objects and arrays", line: `{"a":{},"b":[],"c":[{},{}],"d":[[]]}`},
		{name: "top level", line: `{"a":1,"b":2,"a":3}`, found: true},
		{name: "resourceType", line: `{"resourceType":"A","x":1,"resourceType":"B"}`, found: true, onType: true},
		{name: "resourceType nested is not the line's type", line: `{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"A","resourceType":"B"}}]}`, found: true},
		{name: "escaped spelling", line: `{"id":"a","\u0069d":"b"}`, found: true},
		{name: "in an array of objects", line: `{"a":[{"x":1},{"x":1,"x":2}]}`, found: true},
		{name: "same name at different depths", line: `{"x":{"x":{"x":1}},"y":[{"x":1},{"x":2}]}`},
		{name: "names that look alike inside strings", line: `{"a":"\"a\":1,","b":"{\"a\":1,\"a\":2}"}`},
		{name: "whitespace", line: " { \"a\" : 1 ,\t\"a\" : 2 } ", found: true},
		{name: "after a closed nested object", line: `{"a":{"b":1},"c":2,"a":3}`, found: true},
		{name: "wide object without duplicates", line: wide(-1)},
		{name: "wide object with one duplicate", line: wide(123_456), found: true},
	}
	var d dupKeys
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !json.Valid([]byte(tt.line)) {
				t.Fatalf("test line is not JSON")
			}
			start := time.Now()
			found, onType := d.find([]byte(tt.line))
			if found != tt.found || onType != tt.onType {
				t.Errorf("find = %v, %v; want %v, %v", found, onType, tt.found, tt.onType)
			}
			if found != refDupKeys(t, tt.line) {
				t.Errorf("find disagrees with encoding/json's tokens")
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// refDupKeys is the slow reference: encoding/json's tokens with a set of names per open object.
func refDupKeys(t testing.TB, line string) bool {
	dec := json.NewDecoder(strings.NewReader(line))
	type frame struct {
		object bool
		names  map[string]bool
		key    bool // the next string is a name
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				if top != nil && top.object {
					top.key = true
				}
				stack = append(stack, &frame{object: true, names: map[string]bool{}, key: true})
			case '[':
				if top != nil && top.object {
					top.key = true
				}
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
			}
		case string:
			if top != nil && top.object && top.key {
				if top.names[v] {
					return true
				}
				top.names[v] = true
				top.key = false
				continue
			}
			if top != nil && top.object {
				top.key = true
			}
		default:
			if top != nil && top.object {
				top.key = true
			}
		}
	}
}

// FuzzDupKeys checks find against the reference on every well-formed JSON input.
func FuzzDupKeys(f *testing.F) {
	for _, s := range []string{`{"a":1,"a":2}`, `{"a":{"a":1},"b":[{"a":1,"b":2}]}`, `{"\u0061":1,"a":2}`, `[{"x":[]},{"x":{}}]`, `"s"`, `{}`} {
		f.Add(s)
	}
	var d dupKeys
	f.Fuzz(func(t *testing.T, line string) {
		if !json.Valid([]byte(line)) || scanShape([]byte(line), maxNestingDepth).depth > maxNestingDepth {
			return
		}
		found, _ := d.find([]byte(line))
		if want := refDupKeys(t, line); found != want {
			t.Errorf("find(%q) = %v, reference says %v", line, found, want)
		}
	})
}
