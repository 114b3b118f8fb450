package reader_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"log"
	"os"

	"github.com/fhirlake/fhirlake/reader"
)

// An export folder holding a gzipped object with a CRLF line, a blank line and a line over the limit.
func Example() {
	ctx := context.Background()
	b, prefix, err := reader.OpenBucket(ctx, "mem://example/export")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("{\"resourceType\":\"Patient\",\"id\":\"a\"}\r\n\n{\"resourceType\":\"Binary\",\"data\":\"QUJDREVGR0g=\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}"))
	zw.Close()
	if err := b.WriteAll(ctx, prefix+"Patient.ndjson.gz", gz.Bytes(), nil); err != nil {
		log.Fatal(err)
	}
	if err := b.WriteAll(ctx, prefix+"_manifest.json", []byte("{}"), nil); err != nil {
		log.Fatal(err)
	}

	objs, err := reader.List(ctx, b, prefix)
	if err != nil {
		log.Fatal(err)
	}
	for _, o := range objs {
		s, c, err := reader.Open(ctx, b, o.Key, reader.Options{MaxLineBytes: 40})
		if err != nil {
			log.Fatal(err)
		}
		for s.Scan() {
			l := s.Line()
			if l.Oversize {
				fmt.Printf("%s:%d oversize, %d bytes at offset %d: ", l.Key, l.Number, l.Length, l.Offset)
				if err := reader.CopyLine(ctx, b, l.Key, l.Offset, l.Length, os.Stdout); err != nil {
					log.Fatal(err)
				}
				fmt.Println()
				continue
			}
			fmt.Printf("%s:%d %s\n", l.Key, l.Number, l.Bytes)
		}
		c.Close()
		if err := s.Err(); err != nil {
			log.Fatal(err)
		}
		fmt.Println(s.Lines(), "lines")
	}
	// Output:
	// export/Patient.ndjson.gz:1 {"resourceType":"Patient","id":"a"}
	// export/Patient.ndjson.gz:3 oversize, 47 bytes at offset 38: {"resourceType":"Binary","data":"QUJDREVGR0g="}
	// export/Patient.ndjson.gz:4 {"resourceType":"Patient","id":"b"}
	// 3 lines
}
