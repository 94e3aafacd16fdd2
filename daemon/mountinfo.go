package daemon

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// MountTableEntry is one line of /proc/self/mountinfo with what the busy
// checks need: the device number tells bind mounts of one file system
// apart from other mounts, the super options name an overlay's layers.
type MountTableEntry struct {
	ID, Parent int
	Dev        string // major:minor of the file system
	Mountpoint string
	FSType     string
	Source     string
	SuperOpts  string
	// Peer is the mount's peer group ("shared:N" gives N), "" when the
	// mount is private: an unmount propagates to the mounts of its peer
	// group and to their slaves, in other mount namespaces too.
	Peer string
}

// MountTable lists the mounts of this mount namespace.
func MountTable() ([]MountTableEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []MountTableEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 10 || sep < 6 || sep+3 >= len(fields) {
			continue
		}
		id, _ := strconv.Atoi(fields[0])
		parent, _ := strconv.Atoi(fields[1])
		out = append(out, MountTableEntry{ID: id, Parent: parent, Dev: fields[2], Mountpoint: unescapeMountinfo(fields[4]),
			FSType: fields[sep+1], Source: unescapeMountinfo(fields[sep+2]), SuperOpts: unescapeMountinfo(fields[sep+3]),
			Peer: peerGroup(fields[6:sep], "shared:")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// MountedAt returns the visible mount at exactly path (the last one).
func MountedAt(table []MountTableEntry, path string) (MountTableEntry, bool) {
	var found MountTableEntry
	ok := false
	for _, m := range table {
		if m.Mountpoint == path {
			found, ok = m, true
		}
	}
	return found, ok
}

// peerGroup returns N of the first optional field prefix+N.
func peerGroup(optional []string, prefix string) string {
	for _, o := range optional {
		if n, ok := strings.CutPrefix(o, prefix); ok {
			return n
		}
	}
	return ""
}

// findMount returns the visible mount at exactly path, if any. The mount
// table is the only reliable way to tell a dead FUSE mount (whose stat fails
// with ENOTCONN) from a plain directory.
func findMount(path string) (MountTableEntry, bool, error) {
	table, err := MountTable()
	if err != nil {
		return MountTableEntry{}, false, err
	}
	m, ok := MountedAt(table, path)
	return m, ok, nil
}

func isFUSE(fstype string) bool {
	return fstype == "fuse" || strings.HasPrefix(fstype, "fuse.") || fstype == "fuseblk"
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for space, ...).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
