package healthcaretest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gocloud.dev/blob"

	"github.com/fhirlake/fhirlake/trigger/internal/fhirtypes"
)

// resource is one stored resource: its raw line, kept verbatim, and what exports select on.
type resource struct {
	typ, id     string
	lastUpdated time.Time
	raw         []byte
	refs        []string // every Reference.reference value in it, contained resources included
	order       int      // position in the store
}

// store is the FHIR store the fake serves: resources in store order (files sorted by name, lines in order).
type store struct {
	res   []*resource
	byKey map[string]*resource // "Type/id"
	byID  map[string][]*resource
	// rev lists, for each resource, the resources referencing it, in store order (built on first group export).
	rev map[*resource][]*resource
}

const maxLine = 64 << 20

// loadStore reads every *.ndjson file of dir. Resources without meta.lastUpdated are taken as updated at
// lastUpdated.
func loadStore(dir string, lastUpdated time.Time) (*store, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("load FHIR store: no *.ndjson file in %s", dir)
	}
	sort.Strings(files)
	s := &store{byKey: map[string]*resource{}, byID: map[string][]*resource{}}
	for _, f := range files {
		if err := s.loadFile(f, lastUpdated); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *store) loadFile(name string, lastUpdated time.Time) error {
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("load FHIR store: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), maxLine)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		r, err := parseResource(line, lastUpdated)
		if err != nil {
			return fmt.Errorf("load %s line %d: %w", filepath.Base(name), n, err)
		}
		key := r.typ + "/" + r.id
		if _, dup := s.byKey[key]; dup {
			return fmt.Errorf("load %s line %d: a %s with that id is already stored", filepath.Base(name), n, r.typ)
		}
		r.order = len(s.res)
		s.res = append(s.res, r)
		s.byKey[key] = r
		s.byID[r.id] = append(s.byID[r.id], r)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("load %s: %w", filepath.Base(name), err)
	}
	return nil
}

func parseResource(line []byte, lastUpdated time.Time) (*resource, error) {
	var v map[string]any
	if err := json.Unmarshal(line, &v); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	typ, _ := v["resourceType"].(string)
	id, _ := v["id"].(string)
	if !fhirtypes.Known(typ) || id == "" {
		return nil, fmt.Errorf("not an R4 resource with an id")
	}
	r := &resource{typ: typ, id: id, lastUpdated: lastUpdated, raw: bytes.Clone(line)}
	if meta, ok := v["meta"].(map[string]any); ok {
		if lu, ok := meta["lastUpdated"].(string); ok {
			t, err := time.Parse(time.RFC3339Nano, lu)
			if err != nil {
				return nil, fmt.Errorf("%s meta.lastUpdated is not an instant", typ)
			}
			r.lastUpdated = t
		}
	}
	collectRefs(v, &r.refs)
	return r, nil
}

// collectRefs appends every string "reference" member under v.
func collectRefs(v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "reference" {
				*out = append(*out, s)
				continue
			}
			collectRefs(x, out)
		}
	case []any:
		for _, x := range v {
			collectRefs(x, out)
		}
	}
}

// resolve finds what a reference points to: "Type/id" (relative, absolute or versioned) by key, and
// "urn:uuid:id" (Synthea's unresolved bundle references) by id, whatever the type. Contained references ("#x")
// point to nothing stored.
func (s *store) resolve(ref string) []*resource {
	if id, ok := strings.CutPrefix(ref, "urn:uuid:"); ok {
		return s.byID[id]
	}
	if strings.HasPrefix(ref, "#") {
		return nil
	}
	ref, _, _ = strings.Cut(ref, "?")
	ref, _, _ = strings.Cut(ref, "#")
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	parts := strings.Split(ref, "/")
	if len(parts) < 2 {
		return nil
	}
	if r, ok := s.byKey[parts[len(parts)-2]+"/"+parts[len(parts)-1]]; ok {
		return []*resource{r}
	}
	return nil
}

func (s *store) buildRev() {
	if s.rev != nil {
		return
	}
	s.rev = map[*resource][]*resource{}
	for _, r := range s.res {
		seen := map[*resource]bool{}
		for _, ref := range r.refs {
			for _, t := range s.resolve(ref) {
				if !seen[t] {
					seen[t] = true
					s.rev[t] = append(s.rev[t], r)
				}
			}
		}
	}
}

// filter is an export's _type and _since.
type filter struct {
	types map[string]bool // nil: every type
	since time.Time       // zero: no bound
}

func (f filter) keep(r *resource) bool {
	if f.types != nil && !f.types[r.typ] {
		return false
	}
	return f.since.IsZero() || r.lastUpdated.After(f.since)
}

// byType groups resources by type, each group in store order.
func byType(rs []*resource) map[string][]*resource {
	out := map[string][]*resource{}
	for _, r := range rs {
		out[r.typ] = append(out[r.typ], r)
	}
	for _, g := range out {
		sort.Slice(g, func(i, j int) bool { return g[i].order < g[j].order })
	}
	return out
}

func (s *store) selectAll(f filter) []*resource {
	var out []*resource
	for _, r := range s.res {
		if f.keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// members resolves a Group's member[].entity references, in member order.
func (s *store) members(group *resource) ([]*resource, error) {
	var g struct {
		Member []struct {
			Entity struct {
				Reference string `json:"reference"`
			} `json:"entity"`
		} `json:"member"`
	}
	if err := json.Unmarshal(group.raw, &g); err != nil {
		return nil, fmt.Errorf("decode Group/%s: %w", group.id, err)
	}
	var out []*resource
	for _, m := range g.Member {
		out = append(out, s.resolve(m.Entity.Reference)...)
	}
	return out, nil
}

// patientBlock is a Patient followed by the resources that reference it (grouped by type, store order) and then the
// resources that the Patient or those reference (one hop, grouped by type, store order), neither holding the Patient
// nor the exported Group. It is the layout of organizeOutputBy=Patient, and reproduces which resources
// ../shared/data/synthea-group-by-patient holds per block. The block's Patient is always written; the others pass f.
func (s *store) patientBlock(p, group *resource, f filter) []*resource {
	s.buildRev()
	in := map[*resource]bool{p: true, group: true}
	var referencing []*resource
	for _, r := range s.rev[p] {
		if !in[r] {
			in[r] = true
			referencing = append(referencing, r)
		}
	}
	var referenced []*resource
	for _, r := range append([]*resource{p}, referencing...) {
		for _, ref := range r.refs {
			for _, t := range s.resolve(ref) {
				if !in[t] {
					in[t] = true
					referenced = append(referenced, t)
				}
			}
		}
	}
	block := []*resource{p}
	for _, part := range [][]*resource{referencing, referenced} {
		groups := byType(part)
		for _, typ := range sortedKeys(groups) {
			for _, r := range groups[typ] {
				if f.keep(r) {
					block = append(block, r)
				}
			}
		}
	}
	return block
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// writeObject writes lines as an NDJSON object; it is committed only when every write succeeded.
func writeObject(ctx context.Context, b *blob.Bucket, key string, lines [][]byte) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := b.NewWriter(ctx, key, &blob.WriterOptions{ContentType: "application/fhir+ndjson"})
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	for _, l := range lines {
		if _, err := w.Write(l); err != nil {
			cancel()
			w.Close()
			return fmt.Errorf("write %s: %w", key, err)
		}
		if _, err := w.Write([]byte{'\n'}); err != nil {
			cancel()
			w.Close()
			return fmt.Errorf("write %s: %w", key, err)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

func raws(rs []*resource) [][]byte {
	out := make([][]byte, len(rs))
	for i, r := range rs {
		out[i] = r.raw
	}
	return out
}
