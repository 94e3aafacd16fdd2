package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Mount roots keep mounts away from users the config does not allow: a
// FUSE mount is allow_other (containers' processes of any uid read it), so
// the only thing between a local user and an image's files (and, for a
// setuid mount, its setuid-root binaries) is that the user cannot reach
// the mountpoint. clipd creates missing roots 0700 and root-owned, warns
// about roots others can traverse, and refuses setuid mounts under them.

// rootMode is the mode of a mount root clipd creates.
const rootMode = 0o700

// prepareRoots creates the missing mount roots (missing parents 0755, the
// root itself 0700) and logs a warning for each root that users other than
// root can traverse. Called at start and on every reload.
func prepareRoots(roots []string, log *slog.Logger) error {
	var errs []error
	for _, r := range roots {
		if err := createRoot(r); err != nil {
			errs = append(errs, err)
			continue
		}
		exp, err := rootExposure(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if exp != nil {
			log.Warn(exp.Error()+"; every local user can read its mounts and setuid mounts are refused under it",
				"root", r, "mode", fmt.Sprintf("%04o", exp.mode), "path", exp.path, "fix", "chmod 0700 "+r)
		}
	}
	return errors.Join(errs...)
}

// createRoot makes root 0700 when it is missing; an existing root is left
// as the operator made it (prepareRoots warns when it is open).
func createRoot(root string) error {
	if _, err := os.Stat(root); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("mount root %s: %w", root, err)
	}
	// Parents stay 0755: /run/clipd also holds the API socket, which
	// allowed peers must reach.
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return fmt.Errorf("create mount root %s: %w", root, err)
	}
	if err := os.Mkdir(root, rootMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create mount root %s: %w", root, err)
	}
	// The umask may have taken bits away, never added any; chmod anyway so
	// that the mode is exactly the documented one.
	if err := os.Chmod(root, rootMode); err != nil {
		return fmt.Errorf("chmod mount root %s: %w", root, err)
	}
	return nil
}

// exposedRoot tells that users other than root can traverse to a root.
type exposedRoot struct {
	root string
	mode fs.FileMode // permission bits of the root itself
	uid  uint32      // owner of the root
	gid  uint32
	// path is the resolved root; every directory on it lets someone
	// other than root through.
	path string
}

func (e *exposedRoot) Error() string {
	return fmt.Sprintf("mount root %s (mode %04o, owner %d:%d) can be traversed by users other than root",
		e.root, e.mode, e.uid, e.gid)
}

// rootExposure returns nil when some directory on the way to root (root
// and every parent, symlinks resolved) is closed to everyone but root,
// and an *exposedRoot otherwise. A directory is closed when it is owned by
// root and grants search (x) neither to others nor to a group other than
// root. This errs on the safe side: two directories open to two different
// groups count as open although no single user may pass both. ACLs are not
// read.
func rootExposure(root string) (*exposedRoot, error) {
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("mount root %s: %w", root, err)
	}
	var exp *exposedRoot
	for p := real; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("mount root %s: %w", root, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("mount root %s: no owner for %s", root, p)
		}
		perm := fi.Mode().Perm()
		if exp == nil {
			exp = &exposedRoot{root: root, mode: perm, uid: st.Uid, gid: st.Gid, path: real}
		}
		if closedToOthers(perm, st.Uid, st.Gid) {
			return nil, nil
		}
		if p == "/" {
			return exp, nil
		}
	}
}

func closedToOthers(perm fs.FileMode, uid, gid uint32) bool {
	return uid == 0 && perm&0o001 == 0 && (perm&0o010 == 0 || gid == 0)
}

// checkRoot is called for each mount request once the mountpoint real is
// known to lie under one of roots: it recreates the root 0700 if it went
// missing (before the mountpoint is created under it) and refuses a setuid
// mount under a root that users other than root can traverse, since they
// could run the image's setuid binaries with its owner's rights.
func checkRoot(setuid bool, real string, roots []string) error {
	for _, r := range roots {
		rr, err := resolveExisting(r)
		if err != nil || !strings.HasPrefix(real, strings.TrimSuffix(rr, "/")+"/") {
			continue
		}
		if err := createRoot(r); err != nil {
			return err
		}
		if !setuid {
			return nil
		}
		exp, err := rootExposure(r)
		if err != nil {
			return err
		}
		if exp != nil {
			return forbidden("setuid mount refused: %v (mount it under a root of mode 0700, or mount without setuid)", exp)
		}
		return nil
	}
	return forbidden("mountpoint %s is outside the mount roots (%s)", real, strings.Join(roots, ", "))
}
