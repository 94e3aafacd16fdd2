package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// holders names what keeps the mount at mountpoint from going away: mounts
// below it (a bind mount on one of its directories: umount2 fails with
// EBUSY), other mounts of the same file system (a bind mount of it
// elsewhere: the unmount succeeds but the file system lives on, and its
// serving process with it) and overlays that use a directory of it as a
// layer (their private clone of it holds it the same way).
func holders(mountpoint string) ([]string, error) {
	table, err := MountTable()
	if err != nil {
		return nil, err
	}
	self, ok := MountedAt(table, mountpoint)
	if !ok {
		return nil, nil
	}
	var out []string
	under := strings.TrimSuffix(mountpoint, "/") + "/"
	for _, m := range table {
		switch {
		case m.ID == self.ID:
		case strings.HasPrefix(m.Mountpoint, under):
			out = append(out, fmt.Sprintf("%s mount at %s", m.FSType, m.Mountpoint))
		case m.Dev == self.Dev && m.Mountpoint != mountpoint:
			out = append(out, fmt.Sprintf("bind mount at %s", m.Mountpoint))
		case m.FSType == "overlay" && overlayUses(m.SuperOpts, mountpoint):
			out = append(out, fmt.Sprintf("overlay at %s (a layer lies in it)", m.Mountpoint))
		}
	}
	return append(out, otherNamespaces(self)...), nil
}

// otherNamespaces names the mount namespaces other than the daemon's that
// hold a mount of the file system dev: a container (runc makes its own
// namespace with a bind mount of its rootfs) keeps the file system alive
// after the daemon's unmount succeeds, so the daemon would pull the upper
// directory, or the serving process, from under it. Each namespace is read
// once, through the first process found in it.
func otherNamespaces(self MountTableEntry) []string {
	own, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	seen := map[string]bool{own: true}
	var out []string
	for _, de := range ents {
		if _, err := strconv.Atoi(de.Name()); err != nil {
			continue
		}
		ns, err := os.Readlink("/proc/" + de.Name() + "/ns/mnt")
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		b, err := os.ReadFile("/proc/" + de.Name() + "/mountinfo")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			sep := slices.Index(f, "-")
			if sep < 6 || f[2] != self.Dev {
				continue
			}
			// The daemon's unmount reaches peers and slaves of its mount.
			if self.Peer != "" && (peerGroup(f[6:sep], "shared:") == self.Peer || peerGroup(f[6:sep], "master:") == self.Peer) {
				continue
			}
			comm, _ := os.ReadFile("/proc/" + de.Name() + "/comm")
			out = append(out, fmt.Sprintf("mount namespace of pid %s (%s), at %s", de.Name(), strings.TrimSpace(string(comm)), unescapeMountinfo(f[4])))
			break
		}
		if len(out) == maxUsersListed {
			break
		}
	}
	return out
}

// overlayUses reports whether an overlay's options name a layer at or
// below dir.
func overlayUses(opts, dir string) bool {
	under := strings.TrimSuffix(dir, "/") + "/"
	for _, o := range strings.Split(opts, ",") {
		k, v, ok := strings.Cut(o, "=")
		if !ok || (k != "lowerdir" && k != "upperdir" && k != "workdir" && k != "lowerdir+" && k != "datadir+") {
			continue
		}
		for _, p := range strings.Split(v, ":") {
			p = filepath.Clean(p)
			if p == dir || strings.HasPrefix(p, under) {
				return true
			}
		}
	}
	return false
}

// maxUsersListed bounds the processes named in a busy answer.
const maxUsersListed = 8

// usersOf names processes whose working directory, root or open files lie
// at or below dir: why an unmount fails with EBUSY. Scanning /proc costs a
// readlink per descriptor, cheap next to an API call; what cannot be read
// (a process that ended meanwhile) is skipped.
func usersOf(dir string) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	under := strings.TrimSuffix(dir, "/") + "/"
	inside := func(p string) bool { return p == dir || strings.HasPrefix(p, under) }
	self := os.Getpid()
	var out []string
	for _, de := range ents {
		pid, err := strconv.Atoi(de.Name())
		if err != nil || pid == self {
			continue
		}
		base := "/proc/" + de.Name()
		how := ""
		for _, l := range []string{"cwd", "root"} {
			if t, err := os.Readlink(base + "/" + l); err == nil && inside(t) {
				how = l
				break
			}
		}
		if how == "" {
			fds, _ := os.ReadDir(base + "/fd")
			for _, fd := range fds {
				if t, err := os.Readlink(base + "/fd/" + fd.Name()); err == nil && inside(t) {
					how = "open file " + t
					break
				}
			}
		}
		if how == "" {
			continue
		}
		comm, _ := os.ReadFile(base + "/comm")
		out = append(out, fmt.Sprintf("pid %d (%s): %s", pid, strings.TrimSpace(string(comm)), how))
		if len(out) == maxUsersListed {
			out = append(out, "...")
			break
		}
	}
	return out
}
