// Command fhirlake turns FHIR R4 NDJSON exports into validated Parquet tables.
//
// It is the composition root: it reads the configuration from the environment and flags, sets up logging once,
// wires the stages together and is the only place that exits.
//
//	fhirlake convert [--in SRC] [--out DST] [--workers N] [--max-line-bytes N] [--recursion-depth N]
//	fhirlake run --message JSON|@file           one message-driven run (a Cloud Run job with an override)
//	fhirlake worker --subscription S            a Pub/Sub pull worker
//	fhirlake serve --addr :8080                 a Pub/Sub push endpoint
//	fhirlake demo [--out DIR]                   the whole path on in-process fakes
//	fhirlake bench [--in DIR] [--repeat N]      speed and memory of both validators, side by side
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	memoryLimitFor(os.Getenv, os.ReadFile).apply()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: fhirlake <command> [flags]

commands:
  demo      run the whole message-driven path on in-process fakes (Pub/Sub, Cloud Storage, Healthcare API)
  convert   convert NDJSON objects (a directory, file://, gs:// or mem://) into Parquet tables
  run       do the run one message asks for (--message JSON|@file)
  worker    pull messages from a Pub/Sub subscription and do their runs
  serve     receive Pub/Sub push messages over HTTP and do their runs
  bench     measure conversion speed and memory of both validators (--in DIR --repeat N)

Run 'fhirlake <command> -h' for the flags of a command.
`

// run is main without the exit, so that tests can drive the whole command.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "convert":
		return convertCmd(ctx, args[1:], getenv, stdout, stderr)
	case "run":
		return runCmd(ctx, args[1:], getenv, stdout, stderr)
	case "worker":
		return workerCmd(ctx, args[1:], getenv, stderr)
	case "serve":
		return serveCmd(ctx, args[1:], getenv, stderr)
	case "demo":
		return demoCmd(ctx, args[1:], getenv, stdout, stderr)
	case "bench":
		return benchCmd(ctx, args[1:], getenv, stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "fhirlake: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
