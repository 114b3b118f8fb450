package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fhirlake/fhirlake/sinks"
)

const sharedData = "../../../shared/data"

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds the fhirlake command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fhirlake-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "fhirlake")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// spreadInput writes the test's input: three synthea-100 files (Condition, 462 kB, is cut into splits), a gzip
// object (read whole), and an object with rejected lines among valid ones.
func spreadInput(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"AllergyIntolerance.ndjson", "CarePlan.ndjson", "Condition.ndjson"} {
		data, err := os.ReadFile(filepath.Join(sharedData, "synthea-100", name))
		if err != nil {
			t.Skip(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	device, err := os.ReadFile(filepath.Join(sharedData, "synthea-100", "Device.ndjson"))
	if err != nil {
		t.Skip(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(device)
	zw.Close()
	if err := os.WriteFile(filepath.Join(dir, "Device.ndjson.gz"), gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var mixed strings.Builder
	for i := range 400 {
		switch i % 10 {
		case 3:
			fmt.Fprintf(&mixed, `{"resourceType":"Patient","id":"bad%d","birthDate":"not a date"}`+"\n", i)
		case 7:
			fmt.Fprintf(&mixed, "not json %d\n\n", i)
		default:
			fmt.Fprintf(&mixed, `{"resourceType":"Patient","id":"p%d","gender":"female"}`+"\n", i)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Mixed.ndjson"), []byte(mixed.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// task is one fhirlake process.
type task struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr *syncBuffer
}

// syncBuffer is a process's output, written by os/exec's copying goroutine and read by the test.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waiters map[string]chan struct{} // seen channels not yet closed, by what they wait for
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	for s, ch := range b.waiters {
		if bytes.Contains(b.buf.Bytes(), []byte(s)) {
			close(ch)
			delete(b.waiters, s)
		}
	}
	return n, err
}

// seen returns a channel closed once the output holds s.
func (b *syncBuffer) seen(s string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ch, ok := b.waiters[s]; ok {
		return ch
	}
	ch := make(chan struct{})
	if bytes.Contains(b.buf.Bytes(), []byte(s)) {
		close(ch)
		return ch
	}
	if b.waiters == nil {
		b.waiters = map[string]chan struct{}{}
	}
	b.waiters[s] = ch
	return ch
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startTask(t *testing.T, args ...string) *task {
	t.Helper()
	tk := &task{stderr: &syncBuffer{}}
	tk.cmd = exec.Command(binary(t), args...)
	tk.cmd.Env = append(os.Environ(), "CLOUD_RUN_TASK_COUNT=", "CLOUD_RUN_TASK_INDEX=", "CLOUD_RUN_EXECUTION=")
	tk.cmd.Stdout = &tk.stdout
	tk.cmd.Stderr = tk.stderr
	if err := tk.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if tk.cmd.ProcessState == nil {
			tk.cmd.Process.Kill()
			tk.cmd.Wait()
		}
	})
	return tk
}

func (tk *task) wait(t *testing.T) {
	t.Helper()
	if err := tk.cmd.Wait(); err != nil {
		t.Fatalf("%v: %v\nstderr:\n%s", tk.cmd.Args, err, tk.stderr.String())
	}
}

// convertArgs are the arguments of one task of n (no --tasks when n is 0).
func convertArgs(in, out string, n, i int, splitBytes int64) []string {
	args := []string{"convert", "--in", in, "--out", out, "--workers", "1", "--validator", "fast", "--log-format", "json"}
	if n > 0 {
		args = append(args, "--tasks", fmt.Sprint(n), "--task-index", fmt.Sprint(i), "--split-bytes", fmt.Sprint(splitBytes))
	}
	return args
}

// spreadRun runs n tasks at once (one plain process when n is 0) and returns the published manifest.
func spreadRun(t *testing.T, in, out string, n int, splitBytes int64) *sinks.Manifest {
	t.Helper()
	var tasks []*task
	for i := range max(n, 1) {
		tasks = append(tasks, startTask(t, convertArgs(in, out, n, i, splitBytes)...))
	}
	published := 0
	for _, tk := range tasks {
		tk.wait(t)
		if strings.Contains(tk.stdout.String(), " total ") {
			published++
		}
	}
	if published < 1 {
		t.Fatalf("no task published the run of %d tasks", n)
	}
	return readManifest(t, out)
}

func readManifest(t *testing.T, out string) *sinks.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "_manifest.json"))
	if err != nil {
		t.Fatalf("no manifest: %v", err)
	}
	var m sinks.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// tableRows reads back the rows of files (relative to out) as sorted JSON objects.
func tableRows(t *testing.T, out string, files []sinks.File, drop ...string) []string {
	t.Helper()
	var rows []string
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(out, f.Key))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range parquetJSON(t, data) {
			if len(drop) > 0 {
				var row map[string]any
				if err := json.Unmarshal([]byte(l), &row); err != nil {
					t.Fatal(err)
				}
				for _, d := range drop {
					delete(row, d)
				}
				b, _ := json.Marshal(row)
				l = string(b)
			}
			rows = append(rows, l)
		}
	}
	slices.Sort(rows)
	return rows
}

// quarantined returns the lines of the quarantine files (not errors*.ndjson) the manifest lists, sorted.
func quarantined(t *testing.T, out string, m *sinks.Manifest) []string {
	t.Helper()
	var lines []string
	for _, f := range m.Rejects {
		if strings.HasPrefix(filepath.Base(f.Key), "errors") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(out, f.Key))
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")...)
	}
	slices.Sort(lines)
	return lines
}

// sourceLines counts the non-blank lines of the input directory.
func sourceLines(t *testing.T, in string) int64 {
	t.Helper()
	var n int64
	entries, _ := os.ReadDir(in)
	for _, e := range entries {
		f, err := os.Open(filepath.Join(in, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var r interface{ Read([]byte) (int, error) } = f
		if strings.HasSuffix(e.Name(), ".gz") {
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			r = zr
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) != "" {
				n++
			}
		}
		f.Close()
	}
	return n
}

// sameRun checks that got publishes the same rows, quarantine and counts as want, with every source line read
// once.
func sameRun(t *testing.T, wantOut string, want *sinks.Manifest, gotOut string, got *sinks.Manifest, lines int64) {
	t.Helper()
	if got.Totals.Lines != lines || got.Totals.Valid+got.Totals.Rejected != lines {
		t.Errorf("totals %+v: want %d lines, each valid or rejected once", got.Totals, lines)
	}
	if got.Totals != want.Totals {
		t.Errorf("totals %+v, want %+v", got.Totals, want.Totals)
	}
	if !slices.Equal(slices.Sorted(maps.Keys(got.Resources)), slices.Sorted(maps.Keys(want.Resources))) {
		t.Fatalf("types %v, want %v", slices.Sorted(maps.Keys(got.Resources)), slices.Sorted(maps.Keys(want.Resources)))
	}
	for typ, w := range want.Resources {
		g := got.Resources[typ]
		gr, wr := tableRows(t, gotOut, g.Files), tableRows(t, wantOut, w.Files)
		if int64(len(gr)) != g.Rows {
			t.Errorf("%s: %d rows read back, the manifest says %d", typ, len(gr), g.Rows)
		}
		if !slices.Equal(gr, wr) {
			t.Errorf("%s: %d rows differ from the %d of one process", typ, len(gr), len(wr))
		}
		if g.Valid != w.Valid || g.Rejected != w.Rejected || g.Duplicates != w.Duplicates || g.Links != w.Links {
			t.Errorf("%s: %+v, want %+v", typ, g, w)
		}
	}
	if !slices.Equal(quarantined(t, gotOut, got), quarantined(t, wantOut, want)) {
		t.Error("the quarantined lines differ")
	}
	for i, in := range want.Inputs {
		if g := got.Inputs[i]; g.Object != in.Object || g.Lines != in.Lines || g.Bytes != in.Bytes {
			t.Errorf("input %+v, want %+v", g, in)
		}
	}
}

// TestConvertSpreadOverTasks runs the real binary as 1, 3 and 8 processes over the same input, one object of which
// is cut into 12 splits: every run publishes the same rows and quarantine, and every line is read once.
func TestConvertSpreadOverTasks(t *testing.T) {
	in := spreadInput(t)
	lines := sourceLines(t, in)
	const splitBytes = 40_000 // Condition.ndjson (461,823 bytes): 12 splits
	oneOut := filepath.Join(t.TempDir(), "one")
	one := spreadRun(t, in, oneOut, 0, 0)
	if one.Totals.Rejected == 0 || one.Totals.Lines != lines {
		t.Fatalf("the single process read %d of %d lines, %d rejected: the fixture is not what the test needs",
			one.Totals.Lines, lines, one.Totals.Rejected)
	}
	for _, n := range []int{3, 8} {
		t.Run(fmt.Sprintf("tasks=%d", n), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			m := spreadRun(t, in, out, n, splitBytes)
			sameRun(t, oneOut, one, out, m, lines)
			plan := readPlan(t, out, m.RunID)
			splits := 0
			for _, s := range plan.Splits {
				if plan.Objects[s.Object].Key == "Condition.ndjson" {
					splits++
				}
			}
			if splits < 8 {
				t.Errorf("Condition.ndjson in %d splits, want at least 8", splits)
			}
			// Each task wrote its own parts.
			writers := map[string]bool{}
			for _, f := range m.Resources["Condition"].Files {
				writers[strings.SplitN(filepath.Base(f.Key), "-", 3)[1]] = true
			}
			if len(writers) != n {
				t.Errorf("Condition parts of %d tasks, want %d", len(writers), n)
			}
		})
	}
}

type planFile struct {
	Objects []struct{ Key string }
	Splits  []struct{ Object, Task int }
}

func readPlan(t *testing.T, out, runID string) planFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "_runs", runID, "plan.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p planFile
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConvertTaskKilled kills one of three tasks with SIGKILL in the middle of its work and starts that task index
// again, as Cloud Run retries a task: the run published is the same as one process's.
func TestConvertTaskKilled(t *testing.T) {
	in := spreadInput(t)
	lines := sourceLines(t, in)
	oneOut := filepath.Join(t.TempDir(), "one")
	one := spreadRun(t, in, oneOut, 0, 0)

	out := filepath.Join(t.TempDir(), "out")
	const n, victim, splitBytes = 3, 1, 40_000
	var tasks []*task
	for i := range n {
		tasks = append(tasks, startTask(t, convertArgs(in, out, n, i, splitBytes)...))
	}
	// Kill the victim once it has started on its splits.
	select {
	case <-tasks[victim].stderr.seen(`"task started"`):
	case <-time.After(runTimeout):
		t.Fatalf("task %d never started:\n%s", victim, tasks[victim].stderr.String())
	}
	if err := tasks[victim].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := tasks[victim].cmd.Wait(); err == nil {
		t.Fatal("the killed task exited cleanly")
	}
	m := readManifestRunID(t, out)
	if _, err := os.Stat(filepath.Join(out, "_runs", m, "tasks", fmt.Sprint(victim)+".json")); err == nil {
		t.Fatal("the task finished before it was killed: the test killed nothing mid-run")
	}
	for i, tk := range tasks {
		if i != victim {
			tk.wait(t)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "_manifest.json")); err == nil {
		t.Fatal("the run is published without the killed task's splits")
	}
	retry := startTask(t, convertArgs(in, out, n, victim, splitBytes)...)
	retry.wait(t)
	if !strings.Contains(retry.stdout.String(), " total ") {
		t.Errorf("the retried task did not publish the run:\n%s", retry.stdout.String())
	}
	sameRun(t, oneOut, one, out, readManifest(t, out), lines)
}

// readManifestRunID returns the run id of the one plan under out/_runs.
func readManifestRunID(t *testing.T, out string) string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(out, "_runs"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("want one run under %s/_runs: %v %v", out, entries, err)
	}
	return entries[0].Name()
}

// TestConvertPerPatientSpread spreads per-Patient data (blocks that share Organizations and Practitioners) over
// four processes: the same tables, duplicates and links as one process. Link rows of splits past byte 0 have line
// 0 (unknown there), so links are compared without their line.
func TestConvertPerPatientSpread(t *testing.T) {
	if testing.Short() {
		t.Skip("3.3 MB of per-Patient data, converted twice")
	}
	data, err := os.ReadFile(filepath.Join(sharedData, "synthea-group-by-patient", "Patient.ndjson"))
	if err != nil {
		t.Skip(err)
	}
	// Blocks 5 to 13: 5 shares with 10, 6 with 11, 12 with 13.
	var excerpt []byte
	blocks := 0
	for l := range strings.SplitAfterSeq(string(data), "\n") {
		if strings.HasPrefix(l, `{"resourceType":"Patient"`) {
			if blocks++; blocks > 13 {
				break
			}
		}
		if blocks >= 5 {
			excerpt = append(excerpt, l...)
		}
	}
	in := t.TempDir()
	if err := os.WriteFile(filepath.Join(in, "Patient.ndjson"), excerpt, 0o644); err != nil {
		t.Fatal(err)
	}
	oneOut := filepath.Join(t.TempDir(), "one")
	one := spreadRun(t, in, oneOut, 0, 0)
	out := filepath.Join(t.TempDir(), "out")
	m := spreadRun(t, in, out, 4, 256<<10)
	if one.Totals.Duplicates == 0 {
		t.Fatal("the excerpt has no duplicates")
	}
	sameRun(t, oneOut, one, out, m, sourceLines(t, in))
	if got, want := tableRows(t, out, m.PatientLinks, "line"), tableRows(t, oneOut, one.PatientLinks, "line"); !slices.Equal(got, want) {
		t.Errorf("%d links, want %d; they differ", len(got), len(want))
	}
}
