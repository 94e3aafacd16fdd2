// Package peeropen opens files with the rights of another user: the peer
// that asked the daemon for a mount. Whatever a mount lets someone read
// must be something they could read themselves, so the archive (in the
// daemon) and the layout blobs it names (in the serving process) are opened
// on a thread that carries the peer's file system identity.
package peeropen

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Identity is the file system identity files are opened with.
type Identity struct {
	UID, GID uint32
	// Groups are the supplementary groups; nil opens with the uid and
	// primary gid only, which can only grant less.
	Groups []uint32
}

// Root reports whether id is root, whose opens need no change of identity.
func (id Identity) Root() bool { return id.UID == 0 }

// String is the form Parse reads: "uid:gid:g1,g2,...".
func (id Identity) String() string {
	gs := make([]string, len(id.Groups))
	for i, g := range id.Groups {
		gs[i] = strconv.FormatUint(uint64(g), 10)
	}
	return fmt.Sprintf("%d:%d:%s", id.UID, id.GID, strings.Join(gs, ","))
}

// Parse reads what String wrote.
func Parse(s string) (Identity, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return Identity{}, fmt.Errorf("identity %q: want uid:gid:groups", s)
	}
	var id Identity
	uid, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil {
		return Identity{}, fmt.Errorf("identity %q: uid: %w", s, err)
	}
	gid, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return Identity{}, fmt.Errorf("identity %q: gid: %w", s, err)
	}
	id.UID, id.GID = uint32(uid), uint32(gid)
	if parts[2] != "" {
		for g := range strings.SplitSeq(parts[2], ",") {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return Identity{}, fmt.Errorf("identity %q: group %q: %w", s, g, err)
			}
			id.Groups = append(id.Groups, uint32(n))
		}
	}
	return id, nil
}

// ErrNotRegular marks a path that opened but is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// IdentityError is a failure to take a peer's identity (not the peer's
// fault: the caller answers with an internal error).
type IdentityError struct{ Err error }

func (e *IdentityError) Error() string { return e.Err.Error() }
func (e *IdentityError) Unwrap() error { return e.Err }

// OpenRegular opens path read-only as id (as the caller when id is root)
// and requires a regular file: not a FIFO, device or directory.
func OpenRegular(id Identity, path string) (*os.File, error) {
	if id.Root() {
		return openRegular(path)
	}
	return Do(id, func() (*os.File, error) { return openRegular(path) })
}

// openRegular opens path read-only and requires a regular file. O_NONBLOCK
// keeps a FIFO from blocking the open; O_NOCTTY keeps a terminal from
// becoming the process's.
func openRegular(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, &os.PathError{Op: "open", Path: path, Err: ErrNotRegular}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Do runs fn on an OS thread whose file system identity is id's: fsuid,
// fsgid and supplementary groups. These are per-thread credentials in Linux
// (the raw system calls, not the libc or Go wrappers that apply them to
// every thread), and leaving fsuid 0 drops the file capabilities
// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ...) from the thread's effective
// set, so the kernel checks every path component with id's rights. The
// goroutine locks its thread and never unlocks it: when it returns, the
// runtime ends the thread instead of reusing it with id's identity.
func Do(id Identity, fn func() (*os.File, error)) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := become(id); err != nil {
			ch <- result{err: &IdentityError{fmt.Errorf("open as uid %d gid %d: %w", id.UID, id.GID, err)}}
			return
		}
		f, err := fn()
		ch <- result{f, err}
	}()
	r := <-ch
	return r.f, r.err
}

// become sets the calling thread's supplementary groups, fsgid and fsuid to
// id's; the caller has locked the thread for good.
func become(id Identity) error {
	groups := id.Groups
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	if _, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); errno != 0 {
		return fmt.Errorf("setgroups: %w", errno)
	}
	// setfsuid and setfsgid report the previous value whatever happens;
	// asking again with an invalid id (-1) reads back what is in effect.
	unix.SetfsgidRetGid(int(id.GID))
	if got, _ := unix.SetfsgidRetGid(-1); got != int(id.GID) {
		return fmt.Errorf("setfsgid %d: fsgid is %d", id.GID, got)
	}
	unix.SetfsuidRetUid(int(id.UID))
	if got, _ := unix.SetfsuidRetUid(-1); got != int(id.UID) {
		return fmt.Errorf("setfsuid %d: fsuid is %d", id.UID, got)
	}
	return nil
}
