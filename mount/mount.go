package mount

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/clipd/clipd/index"
)

// Options tune a mount.
type Options struct {
	// FsName is shown as the source in /proc/mounts; "clipd" when empty.
	FsName string
	// Debug logs every FUSE request and reply (very verbose).
	Debug bool
	// Logger receives read failures and go-fuse diagnostics; slog.Default()
	// when nil.
	Logger *slog.Logger
}

// Stats count what the kernel asked of one mount.
type Stats struct {
	Reads     int64 // read requests served
	BytesRead int64 // bytes returned to the kernel
}

// Mount is one mounted image.
type Mount struct {
	mountpoint string
	server     *fuse.Server
	sh         *shared
	// externalNodeID records whether FUSE node IDs are the inode numbers.
	externalNodeID bool

	mu        sync.Mutex
	unmounted bool
}

const (
	// cacheTimeout is how long the kernel may trust entries, attributes and
	// failed lookups: the tree never changes while mounted.
	cacheTimeout = time.Hour
	// maxRequest is the largest read the kernel sends in one request (and
	// the read-ahead window): fewer, larger requests suit lazily fetched
	// content.
	maxRequest = 1 << 20
)

// New mounts a read-only at mountpoint. layers[i] yields the uncompressed
// bytes of a.Layers[i].
func New(mountpoint string, a *index.Archive, layers []io.ReaderAt, opts Options) (*Mount, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if a == nil {
		return nil, fmt.Errorf("mount at %s: nil archive", mountpoint)
	}
	if st, err := os.Stat(mountpoint); err != nil {
		return nil, fmt.Errorf("mount %s: %w", a.Path, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("mount %s at %s: not a directory", a.Path, mountpoint)
	}
	log = log.With("mountpoint", mountpoint)
	sh := &shared{layers: layers, log: log, noXattrs: !hasXattrs(a)}
	p, err := newPlan(a, layers, sh, log)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", a.Path, mountpoint, err)
	}
	sh.statfs = fuse.StatfsOut{
		Blocks:  (p.totalBytes + blockSize - 1) / blockSize,
		Files:   uint64(len(a.Nodes)),
		Bsize:   blockSize,
		Frsize:  blockSize,
		NameLen: 255,
	}

	fsName := opts.FsName
	if fsName == "" {
		fsName = "clipd"
	}
	timeout := cacheTimeout
	root := p.nodes[0]
	fopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount: true,
			AllowOther:  true,
			// MS_RDONLY makes the kernel refuse every change before it
			// reaches us. Setuid binaries of the image must work, so no
			// MS_NOSUID; device nodes of an image must not open host
			// devices through this mount, so MS_NODEV.
			DirectMountFlags: syscall.MS_RDONLY | syscall.MS_NODEV,
			// "ro" again for the fusermount fallback; default_permissions
			// makes the kernel check mode bits for non-root callers.
			Options:      []string{"ro", "default_permissions"},
			FsName:       fsName,
			Name:         "clipd",
			MaxWrite:     maxRequest,
			MaxReadAhead: maxRequest,
			Debug:        opts.Debug,
			Logger:       slog.NewLogLogger(log.Handler(), slog.LevelInfo),
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		// Image trees have files of mode 0000 (e.g. /etc/shadow); they must
		// not be shown as 0644.
		NullPermissions: true,
		RootStableAttr:  &fs.StableAttr{Ino: root.attr.Ino},
		// Node IDs equal to inode numbers make them deterministic across
		// mounts of the same index. No hand-over of a live mount relies on
		// it (go-fuse cannot take over a live session; a mount outlives a
		// daemon restart in its own serving process). Only possible when
		// no non-root inode is number 1, the root's fixed node ID.
		ExternalNodeID: p.externalNodeID,
		Logger:         slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		OnAdd: func(ctx context.Context) {
			p.build(ctx, root.EmbeddedInode())
		},
	}
	server, err := fs.Mount(mountpoint, root, fopts)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", a.Path, mountpoint, err)
	}
	log.Debug("mounted", "archive", a.Path, "nodes", len(a.Nodes), "external_node_id", p.externalNodeID)
	return &Mount{mountpoint: mountpoint, server: server, sh: sh, externalNodeID: p.externalNodeID}, nil
}

// Mountpoint returns the directory the image is mounted on.
func (m *Mount) Mountpoint() string { return m.mountpoint }

// Unmount detaches the filesystem; force uses a lazy detach (MNT_DETACH) so a
// busy mount goes away once its last user leaves. A forced unmount returns
// only when the kernel has released the filesystem, which waits for files
// still open in it to be closed. Unmounting twice is not an error.
func (m *Mount) Unmount(force bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unmounted {
		return nil
	}
	if !force {
		if err := m.server.Unmount(); err != nil {
			return fmt.Errorf("unmount %s: %w", m.mountpoint, err)
		}
		m.unmounted = true
		return nil
	}
	if err := syscall.Unmount(m.mountpoint, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
		// EINVAL: no longer a mount point, e.g. detached by someone else;
		// the server still ends once the kernel lets go.
		return fmt.Errorf("detach %s: %w", m.mountpoint, err)
	}
	m.unmounted = true
	m.server.Wait()
	return nil
}

// Wait blocks until the filesystem is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// Stats returns the counters of this mount.
func (m *Mount) Stats() Stats {
	return Stats{Reads: m.sh.reads.Load(), BytesRead: m.sh.bytesRead.Load()}
}

func hasXattrs(a *index.Archive) bool {
	for _, n := range a.Nodes {
		if len(n.Xattrs) > 0 {
			return true
		}
	}
	return false
}
