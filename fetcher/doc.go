// Package fetcher owns blob sources (a registry through go-containerregistry
// transports, a local OCI layout, the file of a v1 archive), ranged reads,
// auth and retries, and the layer reader that turns reads of uncompressed
// offsets into blob reads through the cache. It keeps no cache of its own:
// everything it fetches goes into a cache.Store shared by every mount.
//
// Until layers carry a decompression index, a gzip or zstd layer is fetched
// whole on its first read, verified against its digest, decompressed into
// the store and served from there; an uncompressed layer is served by ranged
// reads of the blob.
package fetcher
