package pipeline

import (
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/fhirlake/fhirlake/sinks"
)

// sliceKeys is a keySource over sorted keys, failing with err once they are used up when err is set.
type sliceKeys struct {
	keys []sinks.Key
	err  error
}

func (s *sliceKeys) Next() (sinks.Key, bool, error) {
	if len(s.keys) == 0 {
		return sinks.Key{}, false, s.err
	}
	k := s.keys[0]
	s.keys = s.keys[1:]
	return k, true, nil
}

// duplicatesByMap is what duplicateKeys must find, the way the merge first found it: every task's keys in a map
// of the lowest task that holds each.
func duplicatesByMap(byTask map[int][]sinks.Key, n int) ([]map[sinks.Key]bool, []int64) {
	owner := map[sinks.Key]int{}
	drop, rows := make([]map[sinks.Key]bool, n), make([]int64, n)
	for _, task := range slices.Sorted(maps.Keys(byTask)) {
		for _, k := range byTask[task] {
			if o, seen := owner[k]; !seen {
				owner[k] = task
				continue
			} else if o == task {
				continue
			}
			if drop[task] == nil {
				drop[task] = map[sinks.Key]bool{}
			}
			drop[task][k] = true
			rows[task]++
		}
	}
	return drop, rows
}

// TestDuplicateKeys: merging the sorted key files finds what a map of every key finds: for each task, the keys a
// lower task also wrote, and the rows of them (a key a task holds twice is two rows), whatever the tasks that hold
// the type, including a task that holds a key twice that a lower task also holds.
func TestDuplicateKeys(t *testing.T) {
	const n = 6
	rng := rand.New(rand.NewPCG(6, 1))
	for round := range 200 {
		shared := make([]sinks.Key, 1+rng.IntN(40)) // keys several tasks may hold: a few distinct first words
		for i := range shared {
			shared[i] = sinks.Key{uint64(rng.IntN(8)), rng.Uint64()}
		}
		byTask := map[int][]sinks.Key{}
		for task := range n {
			if rng.IntN(4) == 0 {
				continue // this task wrote nothing of the type
			}
			var keys []sinks.Key
			for range rng.IntN(60) {
				if rng.IntN(2) == 0 {
					keys = append(keys, shared[rng.IntN(len(shared))])
				} else {
					keys = append(keys, sinks.Key{uint64(rng.IntN(8)), rng.Uint64()})
				}
			}
			slices.SortFunc(keys, sinks.Key.Compare)
			byTask[task] = keys
		}
		var srcs []keySource
		var tasks []int
		for _, task := range slices.Sorted(maps.Keys(byTask)) {
			srcs, tasks = append(srcs, &sliceKeys{keys: slices.Clone(byTask[task])}), append(tasks, task)
		}
		drop, rows, err := duplicateKeys(srcs, tasks, n)
		if err != nil {
			t.Fatal(err)
		}
		wantDrop, wantRows := duplicatesByMap(byTask, n)
		for task := range n {
			if !maps.Equal(drop[task], wantDrop[task]) || (drop[task] == nil) != (wantDrop[task] == nil) || rows[task] != wantRows[task] {
				t.Fatalf("round %d, task %d: %d keys to drop in %d rows, want %d keys in %d rows", round, task,
					len(drop[task]), rows[task], len(wantDrop[task]), wantRows[task])
			}
		}
	}

	// A task holding a key twice that a lower task holds: both its rows go.
	k := sinks.Key{1, 2}
	drop, rows, err := duplicateKeys([]keySource{&sliceKeys{keys: []sinks.Key{k}}, &sliceKeys{keys: []sinks.Key{k, k, {3, 4}}}}, []int{0, 2}, 3)
	if err != nil || drop[0] != nil || !drop[2][k] || len(drop[2]) != 1 || rows[2] != 2 || rows[0] != 0 {
		t.Errorf("key held once by task 0 and twice by task 2: drop %v, rows %v, %v; want task 2's two rows", drop, rows, err)
	}
}

// TestDuplicateKeysFails: a key file that cannot be read through fails the merge.
func TestDuplicateKeysFails(t *testing.T) {
	bad := errors.New("read keys: broken")
	_, _, err := duplicateKeys([]keySource{
		&sliceKeys{keys: []sinks.Key{{1, 1}, {5, 5}}},
		&sliceKeys{keys: []sinks.Key{{1, 1}}, err: bad},
	}, []int{0, 1}, 2)
	if !errors.Is(err, bad) {
		t.Errorf("err = %v, want %v", err, bad)
	}
}
