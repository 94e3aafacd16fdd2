// Package cache owns the on-disk span store shared by every mount on the host
// and by several processes at once (the daemon and one serving process per
// mount).
//
// Layout: one immutable file per entry, at the path its key names
// ("sha256:ab12…/span-4194304/7-9f8e…": the span's number and a hash of
// what decides its bytes, fetcher.spanKey), holding a 32-byte header (magic, payload
// length, CRC32C of the payload, CRC32C of the header) and the payload.
//
//   - Publish: written to .tmp/, then renamed into place while the ledger
//     lock is held; a reader sees nothing or the whole entry. Nothing is
//     fsynced: the checksum below catches what a power loss may leave.
//   - Integrity: the header and the payload's checksum are checked the first
//     time a process opens an entry, so a file torn by a crash (or changed on
//     disk) is removed and refetched, never served.
//   - Budget: .ledger holds the budget, the bytes in use and the evictions,
//     updated under an flock by every process, so max_size and min_free hold
//     across processes (the daemon, and `clipd cache prune`, record the
//     budget; serving processes adopt it, and a reload reaches them all;
//     Inspect, for `clipd cache ls`, only reads it). Each process keeps an
//     in-memory view of entries and their last use (a hit costs no syscall;
//     the file's mtime is refreshed at most once a minute so other
//     processes see the use), evicts the least recently used entries on
//     demand and in the background, and rescans the directory when its view
//     runs out or periodically to correct drift left by a killed process.
//   - Hits: ReadAt keeps entries open in a bounded fd cache and costs one
//     pread with no lock held across I/O. An evicted file stays readable
//     through an open fd (Linux semantics); fds of deleted files are closed
//     by a periodic sweep so that their blocks are freed.
//   - Misses, single flight across processes: after a ReadAt misses,
//     Acquire takes flocks on lock files (a fixed set of stripes under
//     .locks/) and looks the keys up once under them; the caller fetches
//     and Puts only what it reports missing, then releases the locks.
package cache
