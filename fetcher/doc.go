// Package fetcher owns blob sources (a registry through go-containerregistry
// transports, a local OCI layout, the file of a v1 archive), ranged reads,
// auth and retries, and the layer reader that turns reads of uncompressed
// offsets into blob reads through the cache. It keeps no cache of its own:
// everything it fetches goes into a cache.Store shared by every mount.
//
// A layer is read span by span (the spans of its decompression index): a
// read takes its spans from the store, and the missing ones are fetched
// with one Range request per run of adjacent spans, each span verified,
// decoded and stored as soon as its bytes are in (spans.go); a read of a
// span another goroutine is fetching joins that fetch (flights.go). The
// index comes from the .clip file when clipd wrote it. A .clip file
// written by clip has none: a gzip or zstd layer is then streamed whole on
// its first read, verified against its digest and indexed on the way, its
// spans and its index stored, and is read lazily from then on; an
// uncompressed layer is cut into spans without reading it. A span much
// larger than the span size (a single-frame zstd layer) is streamed, so
// that a read waits only for its own bytes (stream.go). An uncompressed
// layer in a local file is read from the file, uncached.
//
// The layers record which spans demand reads touch first (record.go) and
// fetch a plan of spans in the background (prefetch.go): requests of at
// most 2 MiB, behind demand reads for a fetch slot, and none started while
// a demand read's or a read-ahead's request is in flight or waiting
// (gate.go). A replay of a prefetch profile (replay.go) starts at the
// first demand touch of a span of its plan, does not yield to the
// workload's requests for spans of its plan when the workload's first read
// was the plan's first span, stops yielding at all once
// the workload's first touches confirm the plan, and is cancelled when
// they leave it.
package fetcher
