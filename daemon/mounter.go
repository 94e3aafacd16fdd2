package daemon

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/internal/peeropen"
)

// Mounter is the daemon's only view of the data plane: mounts served by
// processes of their own, which outlive the daemon and are adopted again by
// the next one (mounter.Spawner).
type Mounter interface {
	// Mount mounts req.Archive at req.Mountpoint, which the daemon has
	// already checked and created. ctx bounds the mount operation only: the
	// filesystem stays until Unmount or until it goes away by itself.
	Mount(ctx context.Context, req MountRequest) (Mounted, error)
	// Adopt connects to the serving process a previous daemon recorded in
	// e. Its errors ErrServingProcessGone and ErrUnmounted decide what
	// becomes of the entry.
	Adopt(ctx context.Context, e StateEntry) (Mounted, error)
	// Reload takes the settings of cfg that the data plane uses and
	// returns the keys it applied and those that changed but need a
	// restart.
	Reload(cfg Config) (applied, restart []string)
	// HostStats are the figures of every mount this Mounter has served,
	// ended ones included, so that host-wide counters never go down. It
	// calls no serving process: live mounts count with the figures of
	// their latest Stats call.
	HostStats() api.MountStats
}

// ErrInvalidArchive marks a Mount error caused by the archive's content (not
// a .clip file, truncated, corrupt): the client sent something unusable, so
// the API answers 422 instead of 500.
var ErrInvalidArchive = errors.New("invalid archive")

// ErrArchiveUnavailable marks a Mount error caused by a file the archive
// names (a layout blob) that the requesting peer cannot read: the API
// answers 404 archive_unavailable, as for an archive it cannot read.
var ErrArchiveUnavailable = errors.New("archive unavailable")

// ErrMountpointMoved marks a Mount error caused by the mountpoint directory
// being renamed or swapped while it was mounted on: the filesystem was
// detached again and the API answers 409, naming the mountpoint.
var ErrMountpointMoved = errors.New("mountpoint moved while mounting")

// ErrRegistryUnauthorized marks a Mount error caused by the registry an
// archive's layers come from refusing the credentials the reads would use
// (401 or 403 to a check made before mounting): the API answers 401
// registry_unauthorized, naming the registry, instead of mounting a tree
// whose every read fails.
var ErrRegistryUnauthorized = errors.New("registry refused access")

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
	// As is the requesting peer's identity: the files the archive names
	// (layout blobs) are opened with its rights. The zero value is root.
	As peeropen.Identity

	// ArchiveFile is Archive opened with the requesting peer's rights; a
	// Mounter reads it (or hands it to its serving process) instead of
	// opening Archive, and the caller closes it once Mount returns. nil:
	// open Archive.
	ArchiveFile *os.File
	// Credentials are the request's registry credentials (a mount by
	// image reference); nil: the daemon-wide keychain. A Mounter keeps
	// them in memory and hands them to its serving process over a pipe,
	// never in arguments, environment or files.
	Credentials *fetcher.Credentials
}

// Mounted is one live filesystem, served by its own process. Every method
// that talks to that process takes a ctx: the daemon bounds each call.
type Mounted interface {
	// Unmount detaches the filesystem; force uses a lazy detach.
	Unmount(ctx context.Context, force bool) error
	// Stats are the mount's figures; when the serving process cannot
	// answer within ctx, the last figures it gave.
	Stats(ctx context.Context) api.MountStats
	// Image is a JSON-able summary of the mounted image.
	Image() any
	// Process describes the serving process, for the mount table.
	Process() ServingProcess
	// Release lets go of the mount without unmounting it: the daemon is
	// stopping, and the next one adopts it.
	Release()
	// Done is closed when the filesystem has gone away, by Unmount or by
	// itself (killed serving process, umount from a shell).
	Done() <-chan struct{}
	// Err tells why the filesystem went away: nil after an unmount (by
	// the daemon or from outside), the cause when the serving process
	// died. Read only after Done is closed.
	Err() error
}

// ServingProcess describes the process that serves a mount which outlives
// the daemon: the daemon records it in the mount table and adopts the mount
// again after a restart.
type ServingProcess struct {
	PID     int    // process id
	Control string // its control socket
	Version string // version of the binary it runs
}

// Deadlines of the daemon's calls to serving processes.
const (
	// statsTimeout bounds the figures calls of one API answer or one
	// metrics scrape, all mounts together: a wedged serving process must
	// not hold up the listing or the metrics.
	statsTimeout = 2 * time.Second
	// unmountCallTimeout bounds one unmount through the API: a serving
	// process detaches at once or refuses (busy), then ends.
	unmountCallTimeout = 30 * time.Second
)

// Errors of Adopt that decide what becomes of an entry.
var (
	// ErrServingProcessGone: the process is dead, so a FUSE mount left at
	// the mountpoint is a dead one and is detached; the mount is failed.
	ErrServingProcessGone = errors.New("serving process is gone")
	// ErrUnmounted: the filesystem was unmounted while the daemon was down
	// and its process ended cleanly; the entry is dropped.
	ErrUnmounted = errors.New("unmounted while the daemon was down")
)
