package daemon

import (
	"context"
	"errors"
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
	Archive    string // absolute path of a .clip file
	Mountpoint string // absolute, resolved, empty directory
	Writable   bool
	Prefetch   bool
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

// MountStats are the per-mount figures of the API and the metrics.
type MountStats struct {
	BytesFetched int64 `json:"bytes_fetched"` // bytes received from the registry
	CacheHits    int64 `json:"cache_hits"`    // reads served from the cache
	Reads        int64 `json:"reads"`         // read requests from the kernel
	BytesRead    int64 `json:"bytes_read"`    // bytes returned to the kernel
	Requests     int64 `json:"requests"`      // blob requests made
}
