// Package zran owns decompression of layer blobs: detecting gzip, zstd and
// uncompressed streams, cutting them into spans while indexing them
// (IndexReader), and decoding one span from its compressed bytes alone
// (SpanDecoder). It knows nothing about tar, files or HTTP.
//
// A zstd span starts at a frame, which needs no state. A gzip span starts
// at a deflate block boundary, which may fall inside a byte and needs the
// 32 KiB of output before it: a Checkpoint records the bit offset and that
// window, and Resume decodes from one.
//
// # Why clipd has its own inflate decoder
//
// Resuming needs a decoder that reports where each block ends, to the bit,
// and can start there with a preset window. Neither library at hand does
// both correctly:
//
//   - compress/flate (the standard library) takes a preset dictionary but
//     starts at a byte boundary, and reports no positions: it cannot start
//     at a bit offset.
//   - github.com/klauspost/compress/flate (v1.19.0 to v1.20.4, the version
//     go.mod pins) has a checkpoint API, WithEobCallback and
//     WithResumeFrom, but the compressed offsets it reports drift by whole
//     bytes after every stored block (it counts the bytes it takes back
//     from its bit buffer for a stored block's length a second time), so
//     a resume from any later checkpoint decodes garbage. Layers of
//     incompressible files are full of stored blocks.
//
// So inflate.go decodes deflate itself (RFC 1951), with its own Huffman
// tables (huffman.go); every span's compressed bytes are verified against
// the SHA-256 in the index before they are decoded. canary_test.go fails
// the day klauspost's resume is right after stored blocks: the choice can
// then be reconsidered.
package zran
