// Command fhirlake turns FHIR R4 NDJSON exports into validated Parquet tables.
//
// It is the composition root: it reads the configuration from the environment and flags, sets up logging once,
// wires the stages together and is the only place that exits.
//
//	fhirlake convert [--in SRC] [--out DST] [--workers N] [--max-line-bytes N] [--recursion-depth N]
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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: fhirlake <command> [flags]

commands:
  convert   convert NDJSON objects (a directory, file://, gs:// or mem://) into Parquet tables

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
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "fhirlake: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
