package main

import (
	"context"
	"fmt"
	"io"
)

// serveCmd is `fhirlake serve`, the Pub/Sub push endpoint (next commit).
func serveCmd(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	fmt.Fprintln(stderr, "fhirlake serve: not implemented yet")
	return 2
}
