package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/bundle"
	"github.com/clipd/clipd/index"
	"golang.org/x/sys/unix"
)

// An OCI runtime bundle is written on request beside a mount: config.json
// for the image's config with root.path at the mountpoint. The bundle
// directory obeys the rules of mountpoints (under a mount root, opened
// beneath it with openat2, nothing followed), is opened before the mount so
// that a bad one costs no mount, is written once the mount is up (the
// image's /etc/passwd is read through it), and is removed with the mount.

// BundleState is what the mount table records of a bundle, so that the
// daemon that deletes the mount, possibly a later one, removes exactly what
// was made.
type BundleState struct {
	Path string `json:"path"`
	// Config identifies the config.json clipd wrote.
	Config bundle.Written `json:"config"`
	// Created are the directories this mount created, outermost first.
	Created []CreatedPath `json:"created,omitempty"`
}

// CreatedPath is a directory clipd created, identified by its inode.
type CreatedPath struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// bundleDir is a bundle directory opened for one mount request; nil when
// the request asks for no bundle (its methods accept nil).
type bundleDir struct {
	*confinedDir
	roots []string
}

// openBundle checks and opens the bundle directory p of a request whose
// mountpoint is real, creating missing directories (0755). The directory
// may hold other files (the mountpoint, as rootfs/ in umoci's layout) but
// no config.json.
func openBundle(p, real string, roots []string) (*bundleDir, error) {
	if p == "" {
		return nil, nil
	}
	switch {
	case !filepath.IsAbs(p):
		return nil, badRequest("bundle directory %q must be an absolute path", p)
	case filepath.Clean(p) != p || slices.Contains(strings.Split(p, "/"), ".."):
		return nil, badRequest("bundle directory %q must be a clean path without \"..\"", p)
	}
	breal, err := resolveExisting(p)
	if err != nil {
		return nil, badRequest("bundle directory %s: %v", p, err)
	}
	switch {
	case breal == real:
		return nil, badRequest("bundle directory %s is the mountpoint: the image would hide config.json (use its parent)", p)
	case strings.HasPrefix(breal, real+"/"):
		return nil, badRequest("bundle directory %s lies inside the mountpoint %s", p, real)
	}
	root, rel, ok := splitRoot(breal, roots)
	if !ok {
		if breal != p {
			return nil, forbidden("bundle directory %s resolves to %s, outside the mount roots (%s)", p, breal, strings.Join(roots, ", "))
		}
		return nil, forbidden("bundle directory %s is outside the mount roots (%s)", p, strings.Join(roots, ", "))
	}
	b := &bundleDir{confinedDir: &confinedDir{path: breal}, roots: roots}
	if err := b.open(root, rel); err != nil {
		b.cleanup()
		return nil, err
	}
	return b, nil
}

// open walks to the bundle directory as confinedDir.walk does and checks
// that it is not inside a FUSE mount and holds no config.json yet.
func (b *bundleDir) open(root, rel string) error {
	if err := b.walk(root, rel, b.stepErr); err != nil {
		return err
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(b.dir.Fd()), &sfs); err != nil {
		return fmt.Errorf("check bundle directory %s: %w", b.path, err)
	}
	if sfs.Type == unix.FUSE_SUPER_MAGIC {
		return conflict("bundle directory %s is inside a FUSE mount", b.path)
	}
	var st unix.Stat_t
	switch err := unix.Fstatat(int(b.dir.Fd()), bundle.ConfigFile, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil:
		return conflict("bundle directory %s already holds %s", b.path, bundle.ConfigFile)
	case !errors.Is(err, unix.ENOENT):
		return badRequest("bundle directory %s: %v", b.path, err)
	}
	return nil
}

// stepErr words a failed step of the bundle directory's walk.
func (b *bundleDir) stepErr(err error, at string, _ bool) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return badRequest("create bundle directory %s: %s is a symbolic link (not followed beneath a mount root)", b.path, at)
	case errors.Is(err, unix.ENOTDIR):
		return badRequest("create bundle directory %s: %s is not a directory", b.path, at)
	case errors.Is(err, unix.EXDEV):
		return conflict("bundle directory %s: %s is a mount point (bundles inside mounts are refused)", b.path, at)
	case errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("open bundle directory %s: openat2 is not available (Linux 5.6 or later is needed): %w", b.path, err)
	default:
		return badRequest("create bundle directory %s: %s: %v", b.path, at, err)
	}
}

func (b *bundleDir) cleanup() {
	if b != nil {
		b.confinedDir.cleanup()
	}
}

func (b *bundleDir) close() {
	if b != nil {
		b.confinedDir.close()
	}
}

// write writes config.json for the image m serves at the mountpoint mp
// (mounted now). The image's /etc/passwd and /etc/group are read through
// the mount, resolved inside it.
func (b *bundleDir) write(mp *confinedDir, image any, writable bool) (*BundleState, error) {
	if b == nil {
		return nil, nil
	}
	img, err := imageInfo(image)
	if err != nil {
		return nil, err
	}
	rootfs, err := openMounted(mp)
	if err != nil {
		return nil, err
	}
	defer rootfs.Close()
	passwd, group, err := bundle.ReadUserFiles(rootfs)
	if err != nil {
		return nil, apiErr(http.StatusUnprocessableEntity, api.CodeBadArchive, "write bundle %s: %v", b.path, err)
	}
	spec, err := bundle.Spec(img, bundle.Options{RootPath: mp.path, Readonly: !writable, Passwd: passwd, Group: group})
	if err != nil {
		return nil, apiErr(http.StatusUnprocessableEntity, api.CodeBadArchive, "write bundle %s for the image's config: %v", b.path, err)
	}
	w, err := bundle.WriteConfig(b.dir, spec)
	if errors.Is(err, unix.EEXIST) {
		return nil, conflict("bundle directory %s already holds %s", b.path, bundle.ConfigFile)
	}
	if err != nil {
		return nil, fmt.Errorf("write bundle %s: %w", b.path, err)
	}
	st := &BundleState{Path: b.path, Config: w}
	for _, c := range b.created {
		st.Created = append(st.Created, CreatedPath{Path: filepath.Join(c.parent.Name(), c.name), Dev: c.dev, Ino: c.ino})
	}
	return st, nil
}

// openMounted opens what is mounted at the mountpoint mp: the walk's
// descriptor is the directory underneath, so the leaf is opened again from
// its parent (the last step crosses into the mount, nothing is followed) and
// must be on another file system than that directory.
func openMounted(mp *confinedDir) (*os.File, error) {
	if len(mp.fds) < 2 {
		return nil, fmt.Errorf("open rootfs %s: no parent descriptor", mp.path)
	}
	parent := mp.fds[len(mp.fds)-2]
	fd, err := unix.Openat(int(parent.Fd()), filepath.Base(mp.path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open rootfs %s: %w", mp.path, err)
	}
	f := os.NewFile(uintptr(fd), mp.path)
	var under, top unix.Stat_t
	if err := unix.Fstat(int(mp.dir.Fd()), &under); err == nil {
		err = unix.Fstat(fd, &top)
		if err == nil && under.Dev == top.Dev {
			err = errors.New("nothing is mounted there")
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("open rootfs %s: %w", mp.path, err)
		}
	}
	return f, nil
}

// imageInfo reads the image config out of a Mounted's Image summary, whose
// JSON carries index.ImageInfo's fields under the same names.
func imageInfo(image any) (*index.ImageInfo, error) {
	if image == nil {
		return &index.ImageInfo{}, nil
	}
	b, err := json.Marshal(image)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	var info index.ImageInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return &info, nil
}

// imageConfig is the image config shown in API answers (nil when unknown).
func imageConfig(image any) *api.ImageConfig {
	if image == nil {
		return nil
	}
	b, err := json.Marshal(image)
	if err != nil {
		return nil
	}
	var c api.ImageConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil
	}
	return &c
}

// bundlePath is the bundle directory of e ("" for none).
func (e *entry) bundlePath() string {
	if e.Bundle == nil {
		return ""
	}
	return e.Bundle.Path
}

// removeBundle removes what the mount's bundle added, once the mount is
// gone: its config.json if still the one written, then the directories
// the mount created, innermost first, each only if still the same and
// empty. An empty directory directly inside a created bundle directory
// (the mountpoint, in umoci's rootfs/ layout) goes too. Paths are opened
// beneath their mount root, nothing followed. Failures are logged: the
// mount itself is gone.
func removeBundle(st *BundleState, mountpoint string, roots []string, log *slog.Logger) {
	if st == nil {
		return
	}
	dir, err := openBeneath(st.Path, roots)
	if err != nil {
		log.Warn("remove bundle: open bundle directory", "bundle", st.Path, "err", err)
		return
	}
	_, err = bundle.RemoveConfig(dir, st.Config)
	dir.Close()
	if err != nil {
		log.Warn("remove bundle", "bundle", st.Path, "err", err)
	}
	created := func(p string) bool {
		return slices.ContainsFunc(st.Created, func(c CreatedPath) bool { return c.Path == p })
	}
	if created(st.Path) && filepath.Dir(mountpoint) == st.Path {
		rmdirBeneath(mountpoint, nil, roots, log)
	}
	for i := len(st.Created) - 1; i >= 0; i-- {
		rmdirBeneath(st.Created[i].Path, &st.Created[i], roots, log)
	}
}

// rmdirBeneath removes the empty directory p (when c is given, only if it
// is still that directory).
func rmdirBeneath(p string, c *CreatedPath, roots []string, log *slog.Logger) {
	parent, err := openBeneath(filepath.Dir(p), roots)
	if err != nil {
		log.Warn("remove bundle: open parent", "dir", p, "err", err)
		return
	}
	defer parent.Close()
	name := filepath.Base(p)
	var st unix.Stat_t
	if err := unix.Fstatat(int(parent.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil ||
		st.Mode&unix.S_IFMT != unix.S_IFDIR || (c != nil && (st.Dev != c.Dev || st.Ino != c.Ino)) {
		return
	}
	if err := unix.Unlinkat(int(parent.Fd()), name, unix.AT_REMOVEDIR); err != nil &&
		!errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOENT) {
		log.Warn("remove bundle: remove directory", "dir", p, "err", err)
	}
}

// openBeneath opens the existing directory p beneath its mount root in one
// openat2 call under the walk's rules. A mount root itself is opened as is.
func openBeneath(p string, roots []string) (*os.File, error) {
	for _, r := range roots {
		if rr, err := resolveExisting(r); err == nil && rr == p {
			return os.Open(p)
		}
	}
	root, rel, ok := splitRoot(p, roots)
	if !ok {
		return nil, fmt.Errorf("%s is outside the mount roots", p)
	}
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open mount root %s: %w", root, err)
	}
	defer unix.Close(rootFd)
	fd, err := unix.Openat2(rootFd, rel, &unix.OpenHow{
		Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: confineResolve})
	if err != nil {
		return nil, fmt.Errorf("open %s beneath %s: %w", p, root, err)
	}
	return os.NewFile(uintptr(fd), p), nil
}

// undoMount takes back a mount whose bundle could not be written.
func (s *Server) undoMount(ctx context.Context, m Mounted, mp *confinedDir, bd *bundleDir) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unmountCallTimeout)
	defer cancel()
	if err := m.Unmount(uctx, true); err != nil {
		s.log.Error("unmount after a failed bundle", "mountpoint", mp.path, "err", err)
		return
	}
	mp.cleanup()
	bd.cleanup()
}
