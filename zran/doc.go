// Package zran owns decompression of layer blobs: detecting gzip, zstd and
// uncompressed streams, and (in later work) deflate decoding with resumable
// checkpoints. It knows nothing about tar, files or HTTP.
package zran
