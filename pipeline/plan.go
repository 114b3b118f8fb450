package pipeline

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/fhirlake/fhirlake/reader"
)

// DefaultSplitBytes is the largest split of a plan when PlanOptions.SplitBytes is zero.
const DefaultSplitBytes = 256 << 20

// Plan is how one run is spread over the tasks of a Cloud Run job: its objects cut into splits of at most
// SplitBytes, each split assigned to one task. Every task follows the same plan (it is stored once, in the run's
// ledger directory), so every line is read by exactly one task.
type Plan struct {
	RunID      string       `json:"run_id"`
	Source     string       `json:"source"` // the manifest's source
	Tasks      int          `json:"tasks"`
	SplitBytes int64        `json:"split_bytes"`
	Objects    []PlanObject `json:"objects"`
	Splits     []PlanSplit  `json:"splits"`
	// Annotations are what the plan's writer wants every task to know (the runner: the export, the message); the
	// pipeline does not read them.
	Annotations json.RawMessage `json:"annotations,omitempty"`
}

// PlanObject is one object of a plan.
type PlanObject struct {
	Key  string `json:"key"`
	Size int64  `json:"size"`
	// Layout: the object's own, or for an object cut into several splits the one decided from its first lines
	// (reader.DetectLayout), so that every split reads it the same way; "" leaves it to the reader.
	Layout reader.Layout `json:"layout,omitempty"`
	// Whole says the object is read whole: a gzip object (not splittable), or one no larger than a split.
	Whole bool `json:"whole,omitempty"`
}

// PlanSplit is a byte range [Start, End) of Objects[Object], read by Task.
type PlanSplit struct {
	Object int   `json:"object"`
	Start  int64 `json:"start"`
	End    int64 `json:"end"`
	Task   int   `json:"task"`
}

// PlanOptions shape a plan. Tasks is required.
type PlanOptions struct {
	RunID      string
	Tasks      int
	SplitBytes int64         // zero: DefaultSplitBytes
	Layout     reader.Layout // of objects whose own layout is unknown (Options.Layout)
	// MaxLineBytes is the reader's line limit while a layout is detected (zero: the reader's default).
	MaxLineBytes int
}

// NewPlan lists src (or takes src.Objects) and cuts it into a plan. The plan depends only on the objects, their
// sizes and contents' first bytes, and the options, so tasks that make it apart make the same plan.
//
// Splits are the objects cut into n = ceil(size/SplitBytes) ranges of equal size (a gzip object stays whole). They
// are assigned largest first (ties by object key, then offset) to the task with the fewest bytes so far (ties by
// the lowest index): the largest task holds at most the average plus one split.
func NewPlan(ctx context.Context, src Source, opts PlanOptions) (*Plan, error) {
	if opts.Tasks < 1 {
		return nil, fmt.Errorf("plan: %d tasks", opts.Tasks)
	}
	if opts.SplitBytes <= 0 {
		opts.SplitBytes = DefaultSplitBytes
	}
	objects := src.Objects
	if objects == nil {
		var err error
		if objects, err = reader.List(ctx, src.Bucket, src.Prefix); err != nil {
			return nil, fmt.Errorf("list %s: %w", src.Name, err)
		}
	}
	p := &Plan{RunID: opts.RunID, Source: src.Name, Tasks: opts.Tasks, SplitBytes: opts.SplitBytes}
	for i, o := range objects {
		po := PlanObject{Key: o.Key, Size: o.Size, Layout: o.Layout, Whole: true}
		if po.Layout == "" && opts.Layout != reader.LayoutAuto {
			po.Layout = opts.Layout
		}
		n := (o.Size + opts.SplitBytes - 1) / opts.SplitBytes
		if n > 1 {
			ok, err := reader.Splittable(ctx, src.Bucket, o.Key)
			if err != nil {
				return nil, fmt.Errorf("plan %s: %w", src.Name, err)
			}
			po.Whole = !ok
		}
		if !po.Whole && (po.Layout == "" || po.Layout == reader.LayoutAuto) {
			l, err := reader.DetectLayout(ctx, src.Bucket, o.Key, reader.Options{MaxLineBytes: opts.MaxLineBytes}, reader.BlockOptions{})
			if err != nil {
				return nil, fmt.Errorf("plan %s: %w", src.Name, err)
			}
			po.Layout = l
		}
		p.Objects = append(p.Objects, po)
		if po.Whole {
			p.Splits = append(p.Splits, PlanSplit{Object: i, Start: 0, End: o.Size})
			continue
		}
		for k := range n {
			p.Splits = append(p.Splits, PlanSplit{Object: i, Start: o.Size * k / n, End: o.Size * (k + 1) / n})
		}
	}
	p.assign()
	return p, nil
}

// assign gives each split a task: largest first to the least loaded task.
func (p *Plan) assign() {
	order := make([]int, len(p.Splits))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		sa, sb := p.Splits[a], p.Splits[b]
		return cmp.Or(
			cmp.Compare(sb.End-sb.Start, sa.End-sa.Start),
			cmp.Compare(p.Objects[sa.Object].Key, p.Objects[sb.Object].Key),
			cmp.Compare(sa.Start, sb.Start))
	})
	load := make([]int64, p.Tasks)
	for _, i := range order {
		t := 0
		for j := 1; j < p.Tasks; j++ {
			if load[j] < load[t] {
				t = j
			}
		}
		p.Splits[i].Task = t
		load[t] += p.Splits[i].End - p.Splits[i].Start
	}
}

// Hash identifies the plan: a task record of another plan is never merged with this plan's.
func (p *Plan) Hash() string {
	data, _ := json.Marshal(p) // a Plan always marshals
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
}

// TaskSplits returns the splits of task, in plan order.
func (p *Plan) TaskSplits(task int) []reader.Split {
	var out []reader.Split
	for _, s := range p.Splits {
		if s.Task != task {
			continue
		}
		o := p.Objects[s.Object]
		out = append(out, reader.Split{Key: o.Key, Start: s.Start, End: s.End, Size: o.Size, Layout: o.Layout})
	}
	return out
}

// TaskBytes returns the bytes each task reads.
func (p *Plan) TaskBytes() []int64 {
	load := make([]int64, p.Tasks)
	for _, s := range p.Splits {
		load[s.Task] += s.End - s.Start
	}
	return load
}

// Encode is the plan as stored; DecodePlan reads it back.
func (p *Plan) Encode() ([]byte, error) { return json.Marshal(p) }

// DecodePlan reads a stored plan and checks that it is whole: every object covered by its splits, each split in
// a task.
func DecodePlan(data []byte) (*Plan, error) {
	var p Plan
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("decode plan: %w", err)
	}
	if p.Tasks < 1 {
		return nil, errors.New("decode plan: no tasks")
	}
	next := make([]int64, len(p.Objects))
	for _, s := range p.Splits {
		if s.Object < 0 || s.Object >= len(p.Objects) || s.Task < 0 || s.Task >= p.Tasks || s.Start != next[s.Object] || s.End < s.Start {
			return nil, fmt.Errorf("decode plan: split %+v does not fit", s)
		}
		next[s.Object] = s.End
	}
	for i, o := range p.Objects {
		if next[i] != o.Size {
			return nil, fmt.Errorf("decode plan: object %d is covered to %d of %d bytes", i, next[i], o.Size)
		}
	}
	return &p, nil
}
