package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fhirlake/fhirlake/pipeline"
	"github.com/fhirlake/fhirlake/reader"
	"gocloud.dev/blob"
)

// benchCmd is `fhirlake bench --in DIR [--repeat N]`: it converts the input N times over, once per validator and
// core count, each in a child process of its own so that its peak RSS and CPU time are its own, and prints the
// figures side by side. The input objects are read from their location every time (from the page cache for a
// local directory); the output goes to a temporary directory that is removed afterwards, or with --out under a
// prefix of each measurement's own that is emptied afterwards (gs://, to measure what uploads hold).
func benchCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parseBenchConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake bench: %v\n", err)
		return 2
	}
	if c.child {
		gcs := &gcsBuckets{opts: defaultGCS}
		defer gcs.Close()
		err = benchChild(ctx, c, gcs.open, stdout)
	} else {
		err = bench(ctx, c, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "fhirlake bench: %v\n", err)
		return 1
	}
	return 0
}

type benchConfig struct {
	In         string
	Out        string // where the measurements write, each under a prefix of its own; empty: a temporary directory
	Repeat     int
	Validators []string
	Cores      []int
	Workers    int // decoding goroutines; 0: one per core of the child
	CPUProfile string
	MemProfile string
	Log        logConfig
	Memory     string // the memory limit the measurements run under (each child sets its own), for the header

	child bool // run one conversion and print its benchResult as JSON
}

func parseBenchConfig(args []string, getenv func(string) string, stderr io.Writer) (benchConfig, error) {
	var c benchConfig
	var validators, cores string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.In, "in", "", "input: a directory, file:///dir, gs://bucket/prefix or mem://; empty: the embedded sample")
	fs.StringVar(&c.Out, "out", "", "output: a directory, file:///dir, gs://bucket/prefix or mem://, each measurement under a prefix of its own that is emptied afterwards; empty: a temporary directory")
	fs.IntVar(&c.Repeat, "repeat", 1, "convert the input this many times over in one run")
	fs.StringVar(&validators, "validators", "reference,fast", "validation paths to measure, comma-separated")
	fs.StringVar(&cores, "cores", "", "core counts (GOMAXPROCS) to measure, comma-separated; empty: 1 and every CPU")
	fs.IntVar(&c.Workers, "workers", 0, "decoding goroutines (0: one per core)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile per measurement to this path plus -VALIDATOR-CORES")
	fs.StringVar(&c.MemProfile, "memprofile", "", "write a heap profile, taken when the heap in use peaked, per measurement to this path plus -VALIDATOR-CORES")
	fs.BoolVar(&c.child, "child", false, "internal: run one measurement and print it as JSON")
	addLogFlags(fs, &c.Log)
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	c.Memory = memoryLimitFor(getenv, os.ReadFile).describe(getenv("GOMEMLIMIT"))
	var errs []error
	if c.Repeat < 1 {
		errs = append(errs, fmt.Errorf("--repeat must be at least 1, not %d", c.Repeat))
	}
	for v := range strings.SplitSeq(validators, ",") {
		v = strings.TrimSpace(v)
		if v != "reference" && v != "fast" {
			errs = append(errs, fmt.Errorf("--validators: %q is not reference or fast", v))
			continue
		}
		if !slices.Contains(c.Validators, v) {
			c.Validators = append(c.Validators, v)
		}
	}
	if cores == "" {
		cores = "1," + strconv.Itoa(runtime.NumCPU())
	}
	for s := range strings.SplitSeq(cores, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("--cores: %q is not a positive number", s))
			continue
		}
		if !slices.Contains(c.Cores, n) {
			c.Cores = append(c.Cores, n)
		}
	}
	if c.Workers < 0 {
		errs = append(errs, fmt.Errorf("--workers must not be negative, not %d", c.Workers))
	}
	if err := c.Log.validate(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// benchResult is one measurement, as a child reports it and the parent completes it.
type benchResult struct {
	Validator string `json:"validator"`
	Cores     int    `json:"cores"`
	Bytes     int64  `json:"bytes"`
	Lines     int64  `json:"lines"`
	Valid     int64  `json:"valid"`
	// ValidByReference counts the valid lines the reference validated (sinks.Totals.ValidByReference).
	ValidByReference int64   `json:"valid_by_reference"`
	Rows             int64   `json:"rows"`
	Wall             float64 `json:"wall_seconds"`
	// Goroutine-seconds per phase (pipeline.Timings).
	Read     float64 `json:"read_seconds"`
	Validate float64 `json:"validate_seconds"`
	Build    float64 `json:"build_seconds"`
	Write    float64 `json:"write_seconds"`
	// The Go runtime's own counts over the run (runtime/metrics): bytes allocated on the heap, collections, and
	// the CPU time the collector took.
	Alloc    int64   `json:"alloc_bytes"`
	GCCycles int64   `json:"gc_cycles"`
	GCCPU    float64 `json:"gc_cpu_seconds"`
	// Filled in by the parent from the child's rusage.
	CPU     float64 `json:"cpu_seconds"`
	PeakRSS int64   `json:"peak_rss_bytes"`
}

// benchChild runs one conversion of c.In, repeated c.Repeat times, with c.Validators[0], and prints the result.
func benchChild(ctx context.Context, c benchConfig, openGCS openGCSFunc, stdout io.Writer) (err error) {
	src, err := openSource(ctx, openGCS, c.In)
	if err != nil {
		return err
	}
	defer src.Bucket.Close()
	objects, err := reader.List(ctx, src.Bucket, src.Prefix)
	if err != nil {
		return fmt.Errorf("list %s: %w", src.Name, err)
	}
	if len(objects) == 0 {
		return fmt.Errorf("no objects under %s", src.Name)
	}
	// The same objects, c.Repeat times over: a per-type export converts into c.Repeat times the rows. (Per-Patient
	// objects would deduplicate every copy after the first.)
	for range c.Repeat {
		src.Objects = append(src.Objects, objects...)
	}
	suffix := fmt.Sprintf("-%s-%d", c.Validators[0], runtime.GOMAXPROCS(0))
	dst, remove, err := benchSink(ctx, openGCS, c.Out, suffix)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := remove(); err == nil {
			err = rerr
		}
	}()

	if c.CPUProfile != "" {
		f, err := os.Create(c.CPUProfile + suffix)
		if err != nil {
			return fmt.Errorf("create CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var peak *peakHeap
	if c.MemProfile != "" {
		peak = watchHeap(ctx)
	}
	var tm pipeline.Timings
	before := readGCMetrics()
	start := time.Now()
	m, err := pipeline.Run(ctx, src, dst, pipeline.Options{
		Workers:    c.Workers,
		Validator:  c.Validators[0],
		Timings:    &tm,
		HeapTarget: heapTarget,
	})
	if err != nil {
		return err
	}
	wall := time.Since(start)
	after := readGCMetrics()
	if peak != nil {
		if err := peak.write(c.MemProfile + suffix); err != nil {
			return err
		}
	}
	r := benchResult{
		Validator: c.Validators[0], Cores: runtime.GOMAXPROCS(0),
		Lines: m.Totals.Lines, Valid: m.Totals.Valid, ValidByReference: m.Totals.ValidByReference, Rows: m.Totals.Rows,
		Wall: wall.Seconds(),
		Read: seconds(tm.Read.Load()), Validate: seconds(tm.Validate.Load()),
		Build: seconds(tm.Build.Load()), Write: seconds(tm.Write.Load()),
		Alloc: after.alloc - before.alloc, GCCycles: after.cycles - before.cycles, GCCPU: after.cpu - before.cpu,
	}
	for _, in := range m.Inputs {
		r.Bytes += in.Bytes
	}
	return json.NewEncoder(stdout).Encode(r)
}

// benchSink opens where a measurement writes: a temporary directory when out is empty, or else the prefix
// "fhirlake-bench<suffix>-<pid>" under out. remove deletes what the measurement wrote there and closes the bucket.
func benchSink(ctx context.Context, openGCS openGCSFunc, out, suffix string) (dst pipeline.Sink, remove func() error, err error) {
	// A local directory (a temporary one, a path or file://) is made here, as a file:// output must exist, and
	// removed whole after.
	var loc, dir string
	if out == "" {
		if dir, err = os.MkdirTemp("", "fhirlake-bench-"); err != nil {
			return dst, nil, fmt.Errorf("create output directory: %w", err)
		}
		loc = dir
	} else {
		loc = fmt.Sprintf("%s/fhirlake-bench%s-%d", strings.TrimSuffix(out, "/"), suffix, os.Getpid())
		if u, err := url.Parse(loc); err == nil && strings.EqualFold(u.Scheme, "file") {
			dir = u.Path
		} else if !strings.Contains(loc, "://") {
			dir = loc
		}
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return dst, nil, fmt.Errorf("create output directory: %w", err)
			}
		}
	}
	if dst, err = openSink(ctx, openGCS, loc); err != nil {
		if dir != "" {
			os.RemoveAll(dir)
		}
		return dst, nil, err
	}
	return dst, func() error {
		defer dst.Bucket.Close()
		if dir != "" {
			return os.RemoveAll(dir)
		}
		// The prefix ends in "/" (reader.OpenBucket adds it), so a sibling is safe; it is "" for mem://, whose
		// bucket is the measurement's own.
		return removePrefix(ctx, dst.Bucket, dst.Prefix)
	}, nil
}

// removePrefix deletes every object of b whose key starts with prefix.
func removePrefix(ctx context.Context, b *blob.Bucket, prefix string) error {
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list %s to remove it: %w", prefix, err)
		}
		if err := b.Delete(ctx, obj.Key); err != nil {
			return fmt.Errorf("remove %s: %w", obj.Key, err)
		}
	}
}

// gcMetrics are running totals of the Go runtime.
type gcMetrics struct {
	alloc, cycles int64
	cpu           float64
}

func readGCMetrics() gcMetrics {
	samples := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
	}
	metrics.Read(samples)
	var m gcMetrics
	if v := samples[0].Value; v.Kind() == metrics.KindUint64 {
		m.alloc = int64(v.Uint64())
	}
	if v := samples[1].Value; v.Kind() == metrics.KindUint64 {
		m.cycles = int64(v.Uint64())
	}
	if v := samples[2].Value; v.Kind() == metrics.KindFloat64 {
		m.cpu = v.Float64()
	}
	return m
}

// peakHeap keeps the heap profile taken when the heap in use was largest, sampled every 100ms.
type peakHeap struct {
	stop func()
	mu   sync.Mutex
	max  uint64
	prof bytes.Buffer
}

func watchHeap(ctx context.Context) *peakHeap {
	p := &peakHeap{}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	p.stop = func() { cancel(); <-done }
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > p.max {
				p.mu.Lock()
				p.max = ms.HeapInuse
				p.prof.Reset()
				_ = pprof.Lookup("heap").WriteTo(&p.prof, 0)
				p.mu.Unlock()
			}
		}
	}()
	return p
}

func (p *peakHeap) write(path string) error {
	p.stop()
	if err := os.WriteFile(path, p.prof.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write heap profile: %w", err)
	}
	return nil
}

func seconds(ns int64) float64 { return time.Duration(ns).Seconds() }

// bench runs one child per validator and core count and prints their results side by side.
func bench(ctx context.Context, c benchConfig, stdout, stderr io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	fmt.Fprintf(stdout, "fhirlake bench: %s, %d× over, %d CPUs, %s, %s\n", benchInputName(c.In), c.Repeat, runtime.NumCPU(),
		runtime.Version(), c.Memory)
	var results []benchResult
	for _, cores := range c.Cores {
		for _, v := range c.Validators {
			r, err := benchOne(ctx, self, c, v, cores, stderr)
			if err != nil {
				return fmt.Errorf("%s on %d cores: %w", v, cores, err)
			}
			fmt.Fprintf(stderr, "measured %s on %d cores: %.1f MB/s\n", v, cores, mb(r.Bytes)/r.Wall)
			results = append(results, r)
		}
	}
	return printBench(stdout, results)
}

func benchInputName(in string) string {
	if in == "" {
		return sampleName
	}
	return sourceName(in)
}

func benchOne(ctx context.Context, self string, c benchConfig, validator string, cores int, stderr io.Writer) (benchResult, error) {
	args := []string{"bench", "--child", "--in", c.In, "--out", c.Out, "--repeat", strconv.Itoa(c.Repeat),
		"--validators", validator, "--workers", strconv.Itoa(c.Workers),
		"--log-format", c.Log.Format, "--log-level", c.Log.Level}
	if c.CPUProfile != "" {
		args = append(args, "--cpuprofile", c.CPUProfile)
	}
	if c.MemProfile != "" {
		args = append(args, "--memprofile", c.MemProfile)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(cores))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		return benchResult{}, fmt.Errorf("run measurement: %w", err)
	}
	var r benchResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return benchResult{}, fmt.Errorf("read measurement: %w", err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.PeakRSS = ru.Maxrss * 1024 // kilobytes on Linux
	}
	r.CPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return r, nil
}

func printBench(w io.Writer, results []benchResult) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "validator\tcores\tMB\tresources\twall s\tMB/s\tMB/s/core\tres/s\tres/s/core\tCPU s\tMB/CPU-s\tpeak RSS MB\tread s\tvalidate s\tbuild s\twrite s\talloc MB\tGCs\tGC CPU s\t")
	for _, r := range results {
		mbs := mb(r.Bytes) / r.Wall
		rps := float64(r.Lines) / r.Wall
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%d\t%.2f\t%.1f\t%.1f\t%.0f\t%.0f\t%.2f\t%.1f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f\t%d\t%.2f\t\n",
			r.Validator, r.Cores, mb(r.Bytes), r.Lines, r.Wall, mbs, mbs/float64(r.Cores), rps, rps/float64(r.Cores),
			r.CPU, mb(r.Bytes)/r.CPU, mb(r.PeakRSS), r.Read, r.Validate, r.Build, r.Write,
			mb(r.Alloc), r.GCCycles, r.GCCPU)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Ratios the speed issue is judged by: fast against reference at the same core count, and each validator's
	// scaling from one core to the most measured.
	find := func(v string, cores int) (benchResult, bool) {
		for _, r := range results {
			if r.Validator == v && r.Cores == cores {
				return r, true
			}
		}
		return benchResult{}, false
	}
	for _, r := range results {
		if r.Validator != "fast" {
			continue
		}
		if r.ValidByReference > 0 {
			fmt.Fprintf(w, "fast on %d cores: the reference validated %d of %d valid lines, in a shape the fast validator does not model\n",
				r.Cores, r.ValidByReference, r.Valid)
		}
		if ref, ok := find("reference", r.Cores); ok {
			fmt.Fprintf(w, "fast / reference on %d cores: %.1f×\n", r.Cores, ref.Wall/r.Wall)
		}
	}
	maxCores := slices.Max(coresOf(results))
	for _, v := range []string{"reference", "fast"} {
		one, ok1 := find(v, 1)
		top, ok2 := find(v, maxCores)
		if ok1 && ok2 && maxCores > 1 {
			fmt.Fprintf(w, "%s on %d cores / on 1 core: %.2f×\n", v, maxCores, one.Wall/top.Wall)
		}
	}
	return nil
}

func coresOf(rs []benchResult) []int {
	out := make([]int, len(rs))
	for i, r := range rs {
		out[i] = r.Cores
	}
	return out
}
