package reader

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"

	"gocloud.dev/blob"
)

var gzipMagic = []byte{0x1f, 0x8b}

// Open opens the object key for line reading. The closer releases the object; close it when done.
//
// An object whose content starts with the gzip magic is gunzipped transparently, whatever its name. A key ending in
// ".gz" whose content is not gzip is read as it is: GCS serves objects stored with Content-Encoding: gzip already
// decompressed. A corrupt or truncated gzip stream is an error from the Scanner's Err, naming key and line.
func Open(ctx context.Context, b *blob.Bucket, key string, opts Options) (*Scanner, io.Closer, error) {
	br, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", key, err)
	}
	src, err := decoded(br)
	if err != nil {
		br.Close()
		return nil, nil, fmt.Errorf("open %s: %w", key, err)
	}
	return NewScanner(src, key, opts), br, nil
}

// CopyLine writes to w exactly the length bytes at offset of the decompressed stream of key: the line an oversize
// Line locates. It streams, holding no more than a copy buffer: a plain object is range read; a gzip object is
// decompressed and discarded up to offset.
func CopyLine(ctx context.Context, b *blob.Bucket, key string, offset, length int64, w io.Writer) error {
	if offset < 0 || length < 0 {
		return fmt.Errorf("copy %s at offset %d length %d: negative position", key, offset, length)
	}
	gz, err := isGzip(ctx, b, key)
	if err != nil {
		return fmt.Errorf("copy %s at offset %d: %w", key, offset, err)
	}
	var n int64
	if gz {
		n, err = copyGzip(ctx, b, key, offset, length, w)
	} else {
		n, err = copyRange(ctx, b, key, offset, length, w)
	}
	if err == nil && n != length {
		err = fmt.Errorf("got %d of %d bytes: %w", n, length, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return fmt.Errorf("copy %s at offset %d length %d: %w", key, offset, length, err)
	}
	return nil
}

func copyRange(ctx context.Context, b *blob.Bucket, key string, offset, length int64, w io.Writer) (int64, error) {
	if length == 0 {
		return 0, nil
	}
	r, err := b.NewRangeReader(ctx, key, offset, length, nil)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return io.Copy(w, r)
}

func copyGzip(ctx context.Context, b *blob.Bucket, key string, offset, length int64, w io.Writer) (int64, error) {
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	zr := &gunzipReader{src: bufio.NewReaderSize(r, 64<<10)}
	if skipped, err := io.CopyN(io.Discard, zr, offset); err != nil {
		if err == io.EOF {
			err = fmt.Errorf("stream ends at %d: %w", skipped, io.ErrUnexpectedEOF)
		}
		return 0, err
	}
	n, err := io.CopyN(w, zr, length)
	if err == io.EOF {
		err = nil // reported as a short copy
	}
	return n, err
}

// isGzip reports whether the object's content starts with the gzip magic.
func isGzip(ctx context.Context, b *blob.Bucket, key string) (bool, error) {
	r, err := b.NewRangeReader(ctx, key, 0, int64(len(gzipMagic)), nil)
	if err != nil {
		return false, err
	}
	defer r.Close()
	var head [2]byte
	n, err := io.ReadFull(r, head[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return false, err
	}
	return bytes.Equal(head[:n], gzipMagic), nil
}

// decoded sniffs the first bytes of r and returns a reader of its decompressed content.
func decoded(r io.Reader) (io.Reader, error) {
	var head [2]byte
	n, err := io.ReadFull(r, head[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("sniff content: %w", err)
	}
	if n < len(head) {
		return bytes.NewReader(head[:n]), nil // empty or a single byte
	}
	src := io.MultiReader(bytes.NewReader(head[:n]), r)
	if !bytes.Equal(head[:], gzipMagic) {
		return src, nil
	}
	return &gunzipReader{src: bufio.NewReaderSize(src, 64<<10)}, nil
}

// gunzipReader decompresses src, reading the gzip header on first use so that a bad header surfaces as a read
// error (with a line number) like any later corruption. Its errors say "gunzip".
type gunzipReader struct {
	src io.Reader
	zr  *gzip.Reader
}

func (g *gunzipReader) Read(p []byte) (int, error) {
	if g.zr == nil {
		zr, err := gzip.NewReader(g.src)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("gunzip: %w", err)
		}
		g.zr = zr
	}
	n, err := g.zr.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("gunzip: %w", err)
	}
	return n, err
}
