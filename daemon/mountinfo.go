package daemon

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mountEntryInfo is one line of /proc/self/mountinfo, reduced to what the
// daemon needs.
type mountEntryInfo struct {
	Mountpoint string
	FSType     string
	Source     string // e.g. "clipd:/path/x.clip" for a clipd mount
}

// readMountinfo lists the mounts of the daemon's mount namespace. The mount
// table is the only reliable way to tell a dead FUSE mount (whose stat fails
// with ENOTCONN) from a plain directory.
func readMountinfo() ([]mountEntryInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []mountEntryInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, mountEntryInfo{Mountpoint: unescapeMountinfo(fields[4]), FSType: fields[sep+1], Source: unescapeMountinfo(fields[sep+2])})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// findMount returns the mount at exactly path, if any (the last one wins,
// as it is the one visible).
func findMount(path string) (mountEntryInfo, bool, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return mountEntryInfo{}, false, err
	}
	var found mountEntryInfo
	ok := false
	for _, m := range mounts {
		if m.Mountpoint == path {
			found, ok = m, true
		}
	}
	return found, ok, nil
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
