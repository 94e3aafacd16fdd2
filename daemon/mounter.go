package daemon

import (
	"context"
	"errors"
	"os"
)

// Mounter is the daemon's only view of the data plane.
type Mounter interface {
	// Mount mounts req.Archive at req.Mountpoint, which the daemon has
	// already checked and created. ctx bounds the mount operation only: the
	// filesystem stays until Unmount or until it goes away by itself.
	Mount(ctx context.Context, req MountRequest) (Mounted, error)
}

// ErrInvalidArchive marks a Mount error caused by the archive's content (not
// a .clip file, truncated, corrupt): the client sent something unusable, so
// the API answers 422 instead of 500.
var ErrInvalidArchive = errors.New("invalid archive")

// MountRequest is what the daemon asks a Mounter for.
type MountRequest struct {
	ID         string // the mount id the daemon chose (names per-mount state)
	Archive    string // absolute path of a .clip file
	Mountpoint string // absolute, resolved, empty directory
	// Dir is Mountpoint opened beneath its mount root by the daemon: mount
	// on this directory (at /proc/self/fd/N), not on the path, which
	// whoever can write in the mount root may redirect meanwhile. nil when
	// the caller has no descriptor (the path is then used).
	Dir      *os.File
	Writable bool
	Prefetch bool
	Setuid   bool // honour setuid/setgid bits (no MS_NOSUID)

	// ArchiveFile is Archive opened with the requesting peer's rights; a
	// Mounter reads it (or hands it to its serving process) instead of
	// opening Archive, and the caller closes it once Mount returns. nil:
	// open Archive.
	ArchiveFile *os.File
}

// Mounted is one live filesystem.
type Mounted interface {
	// Unmount detaches the filesystem; force uses a lazy detach.
	Unmount(force bool) error
	Stats() MountStats
	// Image is a JSON-able summary of the mounted image.
	Image() any
	// Done is closed when the filesystem has gone away, by Unmount or by
	// itself (killed serving process, umount from a shell).
	Done() <-chan struct{}
}

// ServingProcess describes the process that serves a mount which outlives
// the daemon: the daemon records it in the mount table and adopts the mount
// again after a restart.
type ServingProcess struct {
	PID     int    // process id
	Control string // its control socket
	Version string // version of the binary it runs
}

// Survivor is a Mounted whose filesystem is served outside the daemon and
// keeps serving when the daemon stops or dies.
type Survivor interface {
	Mounted
	Process() ServingProcess
	// Release lets go of the mount without unmounting it: the daemon is
	// stopping, and the next one adopts it.
	Release()
}

// Failer is a Mounted that can tell why its filesystem went away: Err is
// nil after an unmount (by the daemon or from outside), and the cause when
// the serving process died. Read only after Done is closed.
type Failer interface {
	Err() error
}

// Adopter is a Mounter whose mounts outlive the daemon: Adopt connects to
// the serving process recorded in the mount table by a previous daemon.
type Adopter interface {
	Adopt(ctx context.Context, e StateEntry) (Mounted, error)
}

// Errors of Adopt that decide what becomes of an entry.
var (
	// ErrServingProcessGone: the process is dead, so a FUSE mount left at
	// the mountpoint is a dead one and is detached; the mount is failed.
	ErrServingProcessGone = errors.New("serving process is gone")
	// ErrUnmounted: the filesystem was unmounted while the daemon was down
	// and its process ended cleanly; the entry is dropped.
	ErrUnmounted = errors.New("unmounted while the daemon was down")
)

// MountStats are the per-mount figures of the API and the metrics.
type MountStats struct {
	BytesFetched int64 `json:"bytes_fetched"` // bytes received from the registry
	CacheHits    int64 `json:"cache_hits"`    // span reads served from the cache
	// Cache figures of issue 4 (see fetcher.Stats).
	CacheMisses    int64 `json:"cache_misses"`     // span reads that needed a fetch
	BytesFromCache int64 `json:"bytes_from_cache"` // bytes read from the cache
	ReadAheads     int64 `json:"read_aheads"`      // spans fetched ahead of reads
	Reads          int64 `json:"reads"`            // read requests from the kernel
	BytesRead      int64 `json:"bytes_read"`       // bytes returned to the kernel
	Requests       int64 `json:"requests"`         // blob requests made
}
