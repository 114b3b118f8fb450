package sinks

import (
	"sync"

	"github.com/apache/arrow/go/v17/parquet/compress"
	"github.com/klauspost/compress/zstd"
)

// Arrow v17's zstd codec builds a new zstd.Encoder for every page it compresses (zstdCodec.EncodeLevel). FHIR
// tables have hundreds to thousands of leaf columns, so each row group pays for thousands of encoder set-ups:
// measured here, that was most of the CPU time of a small run. pooledZstd keeps one encoder per level and
// delegates everything else (decoding, streams) to Arrow's own codec. EncodeAll is safe for concurrent use.
type pooledZstd struct {
	compress.Codec // Arrow's codec: Decode, NewReader, NewWriter, NewWriterLevel, CompressBound

	mu       sync.Mutex
	encoders map[int]*zstd.Encoder
}

var registerZstd sync.Once

// usePooledZstd replaces Arrow's zstd codec with pooledZstd, once per process, before the first Table writes.
func usePooledZstd() {
	registerZstd.Do(func() {
		arrow, err := compress.GetCodec(compress.Codecs.Zstd)
		if err != nil {
			return // Arrow without zstd: keep whatever is registered
		}
		compress.RegisterCodec(compress.Codecs.Zstd, &pooledZstd{Codec: arrow, encoders: map[int]*zstd.Encoder{}})
	})
}

func (c *pooledZstd) Encode(dst, src []byte) []byte {
	return c.EncodeLevel(dst, src, compress.DefaultCompressionLevel)
}

func (c *pooledZstd) EncodeLevel(dst, src []byte, level int) []byte {
	enc, err := c.encoder(level)
	if err != nil {
		return c.Codec.EncodeLevel(dst, src, level)
	}
	return enc.EncodeAll(src, dst[:0])
}

func (c *pooledZstd) encoder(level int) (*zstd.Encoder, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if enc, ok := c.encoders[level]; ok {
		return enc, nil
	}
	l := zstd.SpeedDefault
	if level != compress.DefaultCompressionLevel {
		l = zstd.EncoderLevelFromZstd(level)
	}
	// A Parquet page is about 1 MiB: a longer window finds next to nothing more and costs memory per encoder.
	enc, err := zstd.NewWriter(nil, zstd.WithZeroFrames(true), zstd.WithEncoderLevel(l), zstd.WithWindowSize(1<<20),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	c.encoders[level] = enc
	return enc, nil
}
